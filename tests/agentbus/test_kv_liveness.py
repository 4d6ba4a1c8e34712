"""``WatchLiveness``: when a silent KV watch counts as dead (a fake stream, pure logic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.kv import liveness
from agentbus.kv.liveness import WatchLiveness


class _Stream:
    """``js.get_msg(next=True)`` of one stream: the sequences of the messages it holds."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.down = False
        self.reads = 0

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> Any:
        self.reads += 1
        assert next and subject == "$KV.b.>"
        if self.down:
            raise nats.errors.NoRespondersError
        if not any(s >= seq for s in self.held):
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(seq=min(s for s in self.held if s >= seq))


def _watch(
    monkeypatch: pytest.MonkeyPatch,
    held: set[int],
    delivered: int,
    *,
    every_s: float = 0.01,
    recheck_s: float = 0.01,
) -> tuple[_Stream, WatchLiveness]:
    """A stream holding ``held`` and a watch that delivered up to ``delivered``."""
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", recheck_s)
    stream = _Stream()
    stream.held = held
    watch = WatchLiveness(cast(Bus, SimpleNamespace(js=stream)), "b", every_s=every_s)
    watch.saw(delivered)
    return stream, watch


async def test_behind_twice_without_progress_is_dead_and_rechecked_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, watch = _watch(monkeypatch, {5, 6, 7, 9}, 7, every_s=0.2, recheck_s=0.05)
    assert not await watch.stale()  # not due yet: no read
    assert stream.reads == 0
    await asyncio.sleep(0.2)
    assert not await watch.stale()  # behind once (9 is there)
    assert not await watch.stale()  # the recheck is not due yet
    await asyncio.sleep(0.06)  # well before every_s: the recheck after being behind
    assert await watch.stale()
    assert stream.reads == 2


async def test_nothing_after_the_last_delivered_is_alive_however_far_the_stream_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages after the last delivered one expired (the stream's last sequence is
    ahead, nothing is there to deliver): alive."""
    _, watch = _watch(monkeypatch, {3}, 3)  # 4..9 were written and have expired
    for _ in range(3):
        await asyncio.sleep(0.02)
        assert not await watch.stale()


async def test_progress_between_checks_or_an_unanswered_check_is_not_dead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, watch = _watch(monkeypatch, {5, 6, 8}, 5)
    await asyncio.sleep(0.02)
    assert not await watch.stale()  # behind once
    watch.saw(6)  # delivered something meanwhile: slow, not dead
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    stream.down = True  # the stream electing its leader: no evidence either way
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    await asyncio.sleep(0.02)
    assert not await watch.stale()
    stream.down = False
    watch.saw(8)  # caught up
    await asyncio.sleep(0.02)
    assert not await watch.stale()
