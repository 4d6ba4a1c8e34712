"""The work stream as the retry, dead-letter, deadline, poison and sweep tests drive it: a
scheduler with quick sweeps, agents and their consumers, deliveries taken by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import Backoff, ErrorEvent, TaskStarted, encode, utcnow
from agentbus.names import BANDS, Names
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings
from tests._harness.polling import eventually

FAST = Backoff(initial_s=0.2, factor=2.0, max_s=2.0, jitter=0.0)
"""Deterministic, short delays between attempts: 0.2 s, 0.4 s, 0.8 s, ..."""


@dataclass
class Sched:
    """An in-process scheduler: its metrics and a client."""

    registry: CollectorRegistry
    client: Client
    settings: SchedulerSettings

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@asynccontextmanager
async def scheduler(bus: Bus, **overrides: Any) -> AsyncIterator[Sched]:
    """Run the scheduler in-process with quick sweeps; ready (endpoints up) on entry."""
    settings = SchedulerSettings(
        **{
            "results_fetch_timeout_s": 0.2,
            "place_interval_s": 0.5,
            "sweep_interval_s": 0.5,
            "sweep_lease_ttl_s": 2,
            **overrides,
        }
    )
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, settings, registry))
    client = Client(bus)

    async def ready() -> bool:
        if task.done():
            task.result()
        try:
            await client.dead_tasks(limit=1)
        except Exception:
            return False
        return True

    try:
        await eventually(ready, timeout_s=15, what="scheduler ready")
        yield Sched(registry, client, settings)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@dataclass
class Calls:
    """What a test handler saw: (task_id, attempt) per call, and cancellations."""

    seen: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def attempts(self, task_id: str) -> list[int]:
        return [a for t, a in self.seen if t == task_id]


def make_agent(capability: str = "work", *, agent_id: str = "rel-1", **settings: Any) -> Agent:
    """An agent (lease 2 s, quick pulls) whose handler is attached by the test."""
    return Agent(
        "rel",
        settings=AgentSettings(
            agent_id=agent_id,
            lease_s=settings.pop("lease_s", 2.0),
            fetch_timeout_s=settings.pop("fetch_timeout_s", 0.5),
            heartbeat_s=settings.pop("heartbeat_s", 0.5),
            **settings,
        ),
    )


@asynccontextmanager
async def running(agent: Agent, bus: Bus) -> AsyncIterator[Agent]:
    """Run ``agent`` on ``bus`` for the block, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(bus, stop))
    try:
        await asyncio.sleep(0)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def bind_like_an_agent(
    bus: Bus, capability: str, *, ack_wait_s: float = 1.0, max_deliver: int = -1
) -> JetStreamContext.PullSubscription:
    """Create the capability consumer as an agent would, and bind a pull subscription."""
    durable = Names.task_consumer(capability)
    await bus.js.add_consumer(
        bus.names.tasks_stream,
        ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=bus.names.task_subject(capability),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_ack_pending=-1,
            max_deliver=max_deliver,
        ),
    )
    return await bus.js.pull_subscribe_bind(durable, stream=bus.names.tasks_stream)


async def bind_all_bands(bus: Bus, capability: str) -> None:
    names = bus.names
    for band in range(BANDS):
        durable = Names.task_consumer(capability, band)
        await bus.js.add_consumer(
            names.tasks_stream,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=names.task_subject(capability, band),
                max_ack_pending=-1,
            ),
        )


async def take_and_die(
    bus: Bus, sub: JetStreamContext.PullSubscription, capability: str, *, agent: str
) -> Msg:
    """Play an agent that takes the next delivery, reports it started and dies."""
    (msg,) = await sub.fetch(1, timeout=10)
    task_id = msgspec.json.decode(msg.data)["task_id"]
    started = TaskStarted(
        task_id=task_id,
        agent_id=agent,
        attempt=msg.metadata.num_delivered,
        started_at=utcnow(),
    )
    await bus.js.publish(bus.names.result_subject(capability, agent), encode(started))
    return msg


async def stream_messages(bus: Bus) -> int:
    """Messages left in the work stream."""
    return int((await bus.js.stream_info(bus.names.tasks_stream)).state.messages)


async def status_is(client: Client, task_id: str, *statuses: str) -> bool:
    try:
        return (await client.get(task_id)).status in statuses
    except Exception:
        return False


class ErrorEvents:
    """Collects the ``ErrorEvent``s published on ``<p>.events.error.>``."""

    def __init__(self) -> None:
        self.events: list[ErrorEvent] = []

    async def start(self, bus: Bus) -> ErrorEvents:
        async def _on(msg: Msg) -> None:
            self.events.append(msgspec.json.decode(msg.data, type=ErrorEvent))

        await bus.nc.subscribe(bus.names.events_all("error"), cb=_on)
        await bus.nc.flush()
        return self

    def about(self, text: str) -> list[ErrorEvent]:
        return [e for e in self.events if text in e.subject or text in e.reason]


async def deleted(bus: Bus, seq: int) -> bool:
    try:
        await bus.js.get_msg(bus.names.tasks_stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return True
    return False
