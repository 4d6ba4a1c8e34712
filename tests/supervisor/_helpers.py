"""Helpers of the supervisor tests: polling, replica events, fleet KV writes, status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import msgspec
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import (
    Deployment,
    GetNodeStatus,
    NodeStatusReply,
    Placement,
    ReplicaEvent,
    ReplicaStatus,
    encode,
    utcnow,
)
from agentbus_supervisor.service import serve
from agentbus_supervisor.settings import SupervisorSettings
from tests._helpers import eventually

T = TypeVar("T")


class EventLog:
    """Collects the replica events of one prefix (core subscription)."""

    def __init__(self) -> None:
        self.events: list[ReplicaEvent] = []

    async def start(self, bus: Bus) -> None:
        async def _on(msg: Msg) -> None:
            self.events.append(msgspec.json.decode(msg.data, type=ReplicaEvent))

        await bus.nc.subscribe(bus.names.events_all("replica"), cb=_on)
        await bus.nc.flush()

    def of(self, kind: str, agent_id: str | None = None) -> list[ReplicaEvent]:
        return [
            e
            for e in self.events
            if e.kind == kind and (agent_id is None or e.agent_id == agent_id)
        ]


async def put_deployment(bus: Bus, deployment: Deployment) -> None:
    kv = await bus.kv(bus.names.deployments_bucket)
    await kv.put(deployment.name, encode(deployment))


async def place(bus: Bus, deployment: str, replica: int, node_id: str) -> None:
    kv = await bus.kv(bus.names.placements_bucket)
    p = Placement(deployment=deployment, replica=replica, node_id=node_id, placed_at=utcnow())
    await kv.put(f"{deployment}.{replica}", encode(p))


async def unplace(bus: Bus, deployment: str, replica: int) -> None:
    kv = await bus.kv(bus.names.placements_bucket)
    await kv.delete(f"{deployment}.{replica}")


async def returns(value: T) -> T:
    return value


@asynccontextmanager
async def running_supervisor(bus: Bus, settings: SupervisorSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, settings, CollectorRegistry()))
    try:
        subject = f"{bus.names.prefix}.supervisor.{settings.node_id}.status"
        await eventually(lambda: _answers(bus, subject, task))
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _answers(bus: Bus, subject: str, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raise what the supervisor died of
    try:
        await bus.request(subject, GetNodeStatus(), NodeStatusReply, timeout_s=0.5)
    except Exception:
        return False
    return True


def status_of(bus: Bus, node_id: str) -> Callable[[], Awaitable[NodeStatusReply]]:
    async def _status() -> NodeStatusReply:
        subject = f"{bus.names.prefix}.supervisor.{node_id}.status"
        return await bus.request(subject, GetNodeStatus(), NodeStatusReply)

    return _status


def replica_where(
    bus: Bus, node_id: str, pred: Callable[[ReplicaStatus], bool]
) -> Callable[[], Awaitable[ReplicaStatus | None]]:
    status = status_of(bus, node_id)

    async def _probe() -> ReplicaStatus | None:
        for r in (await status()).replicas:
            if pred(r):
                return r
        return None

    return _probe
