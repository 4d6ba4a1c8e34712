"""Exactly one scheduler instance places at a time (KV lease ``scheduler-placement``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.kv.lease import LeaseRecord
from agentbus.messages import Deployment, PlacementEvent
from agentbus.settings import BusSettings
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings
from tests._harness.fleet import Heartbeats, heartbeats, per_node, read_placements
from tests._harness.polling import eventually

__all__ = ["heartbeats"]  # the fixture


@dataclass
class Instance:
    instance_id: str
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    @property
    def holds(self) -> bool:
        return self.metric("agentbus_scheduler_placement_lease_held") == 1

    @property
    def puts(self) -> float:
        return self.metric("agentbus_scheduler_placement_writes_total", {"op": "put"})


@asynccontextmanager
async def scheduler_instance(bus: Bus, instance_id: str) -> AsyncIterator[Instance]:
    settings = SchedulerSettings(
        instance_id=instance_id,
        placement_lease_ttl_s=2,
        place_interval_s=0.5,
        results_fetch_timeout_s=0.2,
    )
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, settings, registry))
    try:
        yield Instance(instance_id, registry, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


class Events:
    def __init__(self) -> None:
        self.placement: list[PlacementEvent] = []

    async def start(self, bus: Bus) -> None:
        async def _on(msg: Msg) -> None:
            self.placement.append(msgspec.json.decode(msg.data, type=PlacementEvent))

        await bus.nc.subscribe(bus.names.events_all("placement"), cb=_on)
        await bus.nc.flush()


async def lease_holder(bus: Bus) -> str | None:
    kv = await bus.kv(bus.names.leases_bucket)
    try:
        entry = await kv.get("scheduler-placement")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return msgspec.json.decode(entry.value or b"", type=LeaseRecord).holder if entry.value else None


@pytest.mark.timeout(90)
async def test_two_schedulers_one_places_then_hand_over(
    bus: Bus, bus_settings: BusSettings, heartbeats: Heartbeats
) -> None:
    events = Events()
    await events.start(bus)
    await heartbeats.add("n1")
    await heartbeats.add("n2")
    bus_b = await Bus.connect(bus_settings, name="scheduler-b")
    try:
        async with (
            scheduler_instance(bus, "sched-a") as a,
            scheduler_instance(bus_b, "sched-b") as b,
        ):
            await eventually(lambda: a.holds or b.holds, what="a lease holder")
            holder, other = (a, b) if a.holds else (b, a)
            assert await lease_holder(bus) == holder.instance_id
            client = Client(bus)

            async def spread() -> bool:
                reply = await client.deploy(Deployment(name="web", replicas=4, image="i"))
                return per_node(reply.placements) == {"n1": 2, "n2": 2}

            # Deploy requests reach either instance (queue group); only the holder writes.
            for _ in range(4):
                await eventually(spread, what="replicas spread over both nodes")
            assert holder.puts == 4
            assert other.puts == 0
            assert not other.holds
            assert {e.scheduler_id for e in events.placement} == {holder.instance_id}

            # A clean stop releases the lease: the other instance takes over at once.
            holder.stop.set()
            await asyncio.wait_for(holder.task, 20)
            await eventually(lambda: other.holds, what="takeover", timeout_s=10)
            assert await lease_holder(bus) == other.instance_id
            await heartbeats.remove("n2")

            async def moved() -> bool:
                return per_node(await read_placements(bus)) == {"n1": 4}

            await eventually(moved, what="replicas moved by the new holder")
            moved_by = {e.scheduler_id for e in events.placement if e.kind == "moved"}
            assert moved_by == {other.instance_id}
    finally:
        await bus_b.close()


def _spawn(bus_settings: BusSettings, instance_id: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "SCHEDULER_INSTANCE_ID": instance_id,
        "SCHEDULER_PLACEMENT_LEASE_TTL_S": "2",
        "SCHEDULER_PLACE_INTERVAL_S": "0.5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentbus_scheduler"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def scheduler_count(bus: Bus) -> int:
    """Scheduler instances of this prefix answering ``$SRV.PING``."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    ids = set()
    try:
        await bus.nc.publish("$SRV.PING.scheduler", b"", reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except nats.errors.TimeoutError:
                break
            if not msg.data:  # "no responders" status
                break
            info = json.loads(msg.data)
            if (info.get("metadata") or {}).get("prefix") == bus.names.prefix:
                ids.add(info["id"])
    finally:
        await sub.unsubscribe()
    return len(ids)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_killed_holder_lease_expires_and_other_takes_over(
    bus: Bus,
    bus_settings: BusSettings,
    heartbeats: Heartbeats,
    processes: dict[str, subprocess.Popen[bytes]],
) -> None:
    events = Events()
    await events.start(bus)
    await heartbeats.add("n1")
    await heartbeats.add("n2")
    for name in ("proc-a", "proc-b"):
        processes[name] = _spawn(bus_settings, name)

    async def both_up() -> bool:
        return await scheduler_count(bus) == 2

    await eventually(both_up, timeout_s=30, what="two scheduler processes answer")
    holder = await eventually(lambda: lease_holder(bus), what="a lease holder")
    survivor = "proc-b" if holder == "proc-a" else "proc-a"
    client = Client(bus)

    async def spread() -> bool:
        reply = await client.deploy(Deployment(name="web", replicas=4, image="i"))
        return per_node(reply.placements) == {"n1": 2, "n2": 2}

    await eventually(spread, what="replicas spread over both nodes")
    assert {e.scheduler_id for e in events.placement} == {holder}

    # SIGKILL: no release. The lease entry expires by its TTL, then the survivor takes it.
    processes[holder].send_signal(signal.SIGKILL)
    processes[holder].wait(10)

    async def taken_over() -> bool:
        return await lease_holder(bus) == survivor

    await eventually(taken_over, timeout_s=20, what="survivor holds the lease")
    await heartbeats.remove("n2")

    async def moved() -> bool:
        return per_node(await read_placements(bus)) == {"n1": 4}

    await eventually(moved, timeout_s=20, what="replicas moved by the survivor")
    assert {e.scheduler_id for e in events.placement if e.kind == "moved"} == {survivor}


@pytest.mark.timeout(90)
async def test_a_failed_pass_is_retried_within_a_backoff(bus: Bus, heartbeats: Heartbeats) -> None:
    """A pass whose placement write the server refuses is retried long before the next
    periodic pass (a node's replicas wait for it while a bucket elects its leader)."""
    await heartbeats.add("n1")
    await heartbeats.add("n2")
    settings = SchedulerSettings(
        instance_id="sched-retry", placement_lease_ttl_s=2, place_interval_s=600
    )
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, settings, registry))
    instance = Instance("sched-retry", registry, stop, task)
    stream = f"KV_{bus.names.placements_bucket}"
    try:
        await eventually(lambda: instance.holds, what="the lease")
        reply = await Client(bus).deploy(Deployment(name="web", replicas=2, image="i"))
        assert per_node(reply.placements) == {"n1": 1, "n2": 1}

        # Every placement write is refused while the stream takes no message over 1 byte.
        config = (await bus.js.stream_info(stream)).config
        await bus.js.update_stream(dataclasses.replace(config, max_msg_size=1))
        failures = "agentbus_scheduler_placement_pass_failures_total"
        await heartbeats.remove("n2")
        await eventually(lambda: instance.metric(failures) >= 2, what="failed passes")
        assert per_node(await read_placements(bus)) == {"n1": 1, "n2": 1}

        await bus.js.update_stream(dataclasses.replace(config, max_msg_size=-1))

        async def moved() -> bool:
            return per_node(await read_placements(bus)) == {"n1": 2}

        # place_interval_s is 600 s: only the retry of the failed pass can move it.
        await eventually(moved, timeout_s=30, what="the replica moved after the refusals")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
