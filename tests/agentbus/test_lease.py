"""KvLease against a real nats-server: one holder at a time, hand-over on stop and on crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from agentbus.bus import Bus
from agentbus.kv.lease import KvLease
from agentbus.settings import BusSettings
from tests._harness.polling import eventually

pytestmark = [pytest.mark.nats]


def _held(lease: KvLease) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return lease.held

    return probe


async def test_one_holder_then_hand_over_on_release(bus: Bus) -> None:
    a = KvLease(bus, "sweeps", holder="a", ttl_s=2)
    b = KvLease(bus, "sweeps", holder="b", ttl_s=2)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    ta = asyncio.create_task(a.run(stop_a))
    await eventually(_held(a))
    tb = asyncio.create_task(b.run(stop_b))
    for _ in range(10):  # over several renewal rounds, b never holds it too
        await asyncio.sleep(0.3)
        assert a.held and not b.held
    stop_a.set()
    await ta
    assert not a.held
    await eventually(_held(b), timeout_s=5)
    stop_b.set()
    await tb


async def test_crashed_holder_lease_expires(bus: Bus, bus_settings: BusSettings) -> None:
    other = await Bus.connect(bus_settings, name="crashing")
    a = KvLease(other, "placement", holder="a", ttl_s=2)
    ta = asyncio.create_task(a.run(asyncio.Event()))
    await eventually(_held(a))
    b = KvLease(bus, "placement", holder="b", ttl_s=2)
    stop_b = asyncio.Event()
    tb = asyncio.create_task(b.run(stop_b))
    await asyncio.sleep(0.5)
    assert not b.held
    # A crash: the holder's connection dies first, so no release reaches the server.
    await other.nc.close()
    ta.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ta
    await eventually(_held(b), timeout_s=8)
    stop_b.set()
    await tb


def test_ttl_must_be_whole_seconds(bus_settings: BusSettings) -> None:
    with pytest.raises(ValueError, match="whole number"):
        KvLease(None, "x", holder="a", ttl_s=1.5)  # type: ignore[arg-type]
