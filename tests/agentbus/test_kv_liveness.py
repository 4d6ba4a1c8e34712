"""``WatchLiveness``: when a silent KV watch counts as dead (a fake stream, pure logic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from agentbus.bus import Bus
from agentbus.kv import liveness
from agentbus.kv.liveness import WatchLiveness


class _Stream:
    """``bus.js.stream_info`` of one stream whose last sequence the test sets."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.reads = 0

    async def stream_info(self, name: str) -> SimpleNamespace:
        self.reads += 1
        return SimpleNamespace(state=SimpleNamespace(last_seq=self.last_seq))


def _watch(stream: _Stream, every_s: float) -> WatchLiveness:
    return WatchLiveness(cast(Bus, SimpleNamespace(js=stream)), "b", every_s=every_s)


async def test_behind_twice_without_progress_is_dead_and_rechecked_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.05)
    stream = _Stream()
    watch = _watch(stream, every_s=0.2)
    stream.last_seq, watch.delivered_seq = 10, 7
    assert not await watch.stale()  # not due yet: no read
    assert stream.reads == 0
    await asyncio.sleep(0.2)
    assert not await watch.stale()  # behind once
    assert not await watch.stale()  # the recheck is not due yet
    await asyncio.sleep(0.06)  # well before every_s: the recheck after being behind
    assert await watch.stale()
    assert stream.reads == 2


async def test_progress_or_catching_up_between_checks_is_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.01)
    stream = _Stream()
    watch = _watch(stream, every_s=0.01)
    stream.last_seq = 10
    watch.saw(5)
    await asyncio.sleep(0.02)
    assert not await watch.stale()  # behind once
    watch.saw(6)  # delivered something meanwhile: slow, not dead
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    watch.saw(10)  # caught up
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    await asyncio.sleep(0.02)
    assert not await watch.stale()
