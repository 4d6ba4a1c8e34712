"""Sweeps and dead-letter moves run in one scheduler instance at a time.

The duties sit behind the KV lease ``scheduler-sweeps``: with two schedulers up,
only the holder sweeps; when it stops the other takes over at once (released lease),
and when it is SIGKILLed the other takes over once the lease entry expires.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import msgspec
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.kv.lease import LeaseRecord
from agentbus.messages import utcnow
from agentbus.settings import BusSettings
from agentbus_scheduler.tasks.sweeps import SWEEPS_LEASE
from tests._harness.polling import eventually
from tests._harness.work_stream import (
    Sched,
    bind_like_an_agent,
    scheduler,
    take_and_die,
)

pytestmark = pytest.mark.nats
SWEEPS = "agentbus_scheduler_sweeps_total"
HELD = "agentbus_scheduler_sweep_lease_held"
SWEPT = "agentbus_scheduler_swept_messages_total"


async def holder(bus: Bus) -> str | None:
    kv = await bus.kv(bus.names.leases_bucket)
    try:
        entry = await kv.get(SWEEPS_LEASE)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return msgspec.json.decode(entry.value, type=LeaseRecord).holder if entry.value else None


async def holder_is(bus: Bus, expected: str) -> bool:
    return await holder(bus) == expected


async def expire_one(s: Sched, task_id: str) -> None:
    """Submit a task nobody serves with a deadline 1 s away; wait until it expired."""
    await s.client.submit("nobody", None, task_id=task_id, deadline=utcnow() + timedelta(seconds=1))
    record = await s.client.wait(task_id, timeout_s=30)
    assert record.status == "expired"


@pytest.mark.timeout(90)
async def test_two_schedulers_one_sweeps_and_a_clean_stop_hands_over(
    bus: Bus, bus_settings: BusSettings
) -> None:
    bus_b = await Bus.connect(bus_settings, name="test-b")
    try:
        async with scheduler(bus, instance_id="sched-a") as a:
            await eventually(lambda: a.metric(HELD) == 1, what="a holds the lease")
            async with scheduler(bus_b, instance_id="sched-b") as b:
                await expire_one(b, "e1")  # submitted through b, swept by a
                await asyncio.sleep(1.0)  # several sweep intervals with both up
                assert await holder(bus) == "sched-a"
                await eventually(
                    lambda: a.metric(SWEPT, {"reason": "expired"}) == 1,
                    what="a deleted the expired message",
                )
                assert a.metric(SWEEPS) > 0
                assert b.metric(SWEEPS) == 0 and b.metric(HELD) == 0
                assert b.metric(SWEPT, {"reason": "expired"}) == 0
            assert await holder(bus) == "sched-a"  # b leaving changes nothing
        assert await holder(bus) is None  # a stopped cleanly: released at once
        async with scheduler(bus_b, instance_id="sched-b") as b:
            await eventually(lambda: b.metric(HELD) == 1, timeout_s=10, what="b holds")
            await expire_one(b, "e2")
            await eventually(
                lambda: b.metric(SWEPT, {"reason": "expired"}) == 1,
                what="b deleted the expired message",
            )
    finally:
        await bus_b.close()


def _spawn(bus_settings: BusSettings, instance_id: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "SCHEDULER_INSTANCE_ID": instance_id,
        "SCHEDULER_SWEEP_INTERVAL_S": "0.3",
        "SCHEDULER_SWEEP_LEASE_TTL_S": "2",
        "SCHEDULER_RESULTS_FETCH_TIMEOUT_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentbus_scheduler"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_killed_sweeper_is_replaced_by_the_other_scheduler(
    bus: Bus, bus_settings: BusSettings, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(_spawn(bus_settings, "sched-proc"))
    await eventually(
        lambda: holder_is(bus, "sched-proc"), timeout_s=30, what="the process holds the lease"
    )
    async with scheduler(bus, instance_id="sched-local") as local:
        await expire_one(local, "k1")  # swept by the process: local never sweeps
        assert await holder(bus) == "sched-proc"
        assert local.metric(SWEEPS) == 0 and local.metric(HELD) == 0

        # a task gets stuck while the process holds the duties, then the process dies
        await local.client.submit("crashy", None, task_id="k-stuck", max_attempts=10)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(10)
        assert await holder(bus) == "sched-proc"  # not released: it expires by TTL
        sub = await bind_like_an_agent(bus, "crashy", ack_wait_s=1.0, max_deliver=1)
        try:
            await take_and_die(bus, sub, "crashy", agent="crashy-1")
            with pytest.raises(TimeoutError):
                await sub.fetch(1, timeout=2.0)  # max deliveries: an advisory
        finally:
            await sub.unsubscribe()

        await eventually(
            lambda: holder_is(bus, "sched-local"), timeout_s=15, what="the survivor takes over"
        )
        stuck = await local.client.wait("k-stuck", timeout_s=20)
        assert stuck.status == "dead"  # the dead-letter move, by the survivor
        dead = "agentbus_scheduler_dead_letters_total"

        def moved() -> float:
            return local.metric(dead, {"source": "advisory"}) + local.metric(
                dead, {"source": "sweep"}
            )

        # the waiter may see the record before the burying coroutine resumes to count it
        await eventually(lambda: moved() >= 1, what="the survivor counted the dead letter")
        assert moved() == 1
        await expire_one(local, "k2")
        await eventually(
            lambda: local.metric(SWEPT, {"reason": "expired"}) == 1,
            what="the survivor deleted the expired message",
        )
