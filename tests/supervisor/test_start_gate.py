"""The start gate: at most ``start_limit`` replicas of a node starting at once, FIFO,
a slot held until the agent registered (or ended, or ``hold_max_s``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from datetime import datetime, timedelta

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import AgentInfo, Backoff, ReplicaEvent, utcnow
from agentbus_supervisor.start_gate import StartGate
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    EventLog,
    echo_process,
    place,
    process_settings,
    put_deployment,
    registered,
    running_supervisor,
)

FAST = Backoff(initial_s=0.05, factor=2.0, max_s=0.5, jitter=0.0)


def info(agent_id: str, started_offset_s: float) -> AgentInfo:
    now = utcnow()
    return AgentInfo(
        agent_id=agent_id,
        name="echo",
        capabilities=["echo"],
        started_at=now + timedelta(seconds=started_offset_s),
        heartbeat_at=now,
        status="ready",
        in_flight=0,
        max_concurrency=1,
    )


async def test_slots_are_limited_and_given_out_in_arrival_order() -> None:
    gate = StartGate(2)
    first, second = await gate.acquire(), await gate.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        slot = await gate.acquire()
        order.append(n)
        slot.release()

    waiting = [asyncio.create_task(take(n)) for n in range(3)]
    await asyncio.sleep(0.05)
    assert order == [] and gate.waiting == 3  # both slots held: everyone waits
    first.release()
    first.release()  # a second release of the same slot gives nothing back
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    assert not first.held and second.held
    second.release()
    async with asyncio.timeout(1):  # both slots free again
        await gate.acquire()
        await gate.acquire()


async def test_until_up_waits_for_an_agent_started_after_the_start() -> None:
    gate = StartGate(1, hold_max_s=30)
    issued = utcnow()
    entry: list[AgentInfo] = [info("a-0", -60)]  # the earlier instance's stale entry
    up = asyncio.create_task(gate.until_up(issued, lambda: entry[-1], lambda: False))
    await asyncio.sleep(0.2)
    assert not up.done()
    entry.append(info("a-0", 0.5))  # the new instance registered
    assert await asyncio.wait_for(up, 5) is True


async def test_until_up_gives_up_when_the_instance_ends_or_the_hold_expires() -> None:
    ended = False
    gate = StartGate(1, hold_max_s=30)
    up = asyncio.create_task(gate.until_up(utcnow(), lambda: None, lambda: ended))
    await asyncio.sleep(0.1)
    ended = True
    assert await asyncio.wait_for(up, 5) is False
    short = StartGate(1, hold_max_s=0.2)
    assert await asyncio.wait_for(short.until_up(utcnow(), lambda: None, lambda: False), 5) is False


@pytest.mark.timeout(120)
async def test_restarts_of_a_node_go_one_at_a_time_at_limit_one(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    """With ``start_limit`` 1, three agents killed at once restart one after another:
    each restart is issued only after the agent restarted before it registered."""
    await put_deployment(bus, echo_process("gated", backoff=FAST))
    ids = [f"gated-{n}" for n in range(3)]
    first_seen: dict[tuple[str, datetime], AgentInfo] = {}
    kv = await bus.kv(bus.names.agents_bucket)
    watcher = await kv.watchall()

    async def follow() -> None:
        async for entry in watcher:
            if entry is not None and entry.operation is None and entry.value:
                got = msgspec.json.decode(entry.value, type=AgentInfo)
                first_seen.setdefault((got.agent_id, got.started_at), got)

    following = asyncio.create_task(follow())
    try:
        async with running_supervisor(bus, process_settings(node_id, start_limit=1)):
            for n in range(3):
                await place(bus, "gated", n, node_id)
            up = [await eventually(registered(bus, a), timeout_s=60) for a in ids]
            killed_at = utcnow()
            for info in up:
                assert info.pid is not None, info
                os.kill(info.pid, signal.SIGKILL)

            def restarted() -> list[ReplicaEvent]:
                return [e for e in events.of("started") if e.at > killed_at]

            await eventually(lambda: len(restarted()) == 3 or None, timeout_s=60)
            for a in ids:

                def seen_again(agent_id: str = a) -> bool:
                    return any(k[0] == agent_id and k[1] > killed_at for k in first_seen)

                await eventually(seen_again, what=f"{a} registered again")
            starts = sorted(restarted(), key=lambda e: e.at)
            for before, after in itertools.pairwise(starts):
                new = [
                    i
                    for (a, at), i in first_seen.items()
                    if a == before.agent_id and at > killed_at
                ]
                # the earlier restart's agent registered before the next restart began
                assert min(i.heartbeat_at for i in new) <= after.at
    finally:
        following.cancel()
        await watcher.stop()  # type: ignore[no-untyped-call]
