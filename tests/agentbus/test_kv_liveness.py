"""``WatchLiveness``: when a silent KV watch counts as dead (a fake consumer, pure logic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest

from agentbus.kv import liveness
from agentbus.kv.liveness import WatchLiveness


class _Consumer:
    """``consumer_info`` of one watch's consumer: pending messages, or gone."""

    def __init__(self) -> None:
        self.num_pending = 0
        self.gone = False
        self.reads = 0

    async def info(self) -> Any:
        self.reads += 1
        if self.gone:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(num_pending=self.num_pending)


async def test_pending_twice_without_progress_is_dead_and_rechecked_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.05)
    consumer = _Consumer()
    watch = WatchLiveness(consumer.info, every_s=0.2)
    consumer.num_pending = 3
    watch.saw(7)
    assert not await watch.stale()  # not due yet: no read
    assert consumer.reads == 0
    await asyncio.sleep(0.2)
    assert not await watch.stale()  # behind once
    assert not await watch.stale()  # the recheck is not due yet
    await asyncio.sleep(0.06)  # well before every_s: the recheck after being behind
    assert await watch.stale()
    assert consumer.reads == 2


async def test_a_consumer_gone_twice_is_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.01)
    consumer = _Consumer()
    watch = WatchLiveness(consumer.info, every_s=0.01)
    consumer.gone = True
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    await asyncio.sleep(0.02)
    assert await watch.stale()


async def test_nothing_pending_or_progress_between_checks_is_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing pending is alive however far the stream's last sequence is ahead (its last
    message expired: a watch started afterwards never receives it)."""
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.01)
    consumer = _Consumer()
    watch = WatchLiveness(consumer.info, every_s=0.01)
    for _ in range(3):
        await asyncio.sleep(0.02)
        assert not await watch.stale()
    consumer.num_pending = 4
    watch.saw(5)
    await asyncio.sleep(0.02)
    assert not await watch.stale()  # behind once
    watch.saw(6)  # delivered something meanwhile: slow, not dead
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    consumer.num_pending = 0  # caught up
    await asyncio.sleep(0.02)
    assert not await watch.stale()
