"""The registry in-process for the tests, and agent/node entries and events as agents write them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from nats.js.api import DeliverPolicy
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import UnavailableError
from agentbus.messages import AgentInfo, Message, NodeInfo, encode, utcnow
from agentbus_registry.service import serve
from agentbus_registry.settings import RegistrySettings


@dataclass
class Registry:
    registry: CollectorRegistry
    client: Client
    task: asyncio.Task[None]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


async def start_registry(bus: Bus, settings: RegistrySettings, stop: asyncio.Event) -> Registry:
    registry = CollectorRegistry()
    task = asyncio.create_task(serve(bus, stop, settings, registry))
    client = Client(bus)
    for _ in range(200):
        if task.done():
            task.result()
        try:
            await client.nodes()
            break
        except UnavailableError:
            await asyncio.sleep(0.05)
    return Registry(registry=registry, client=client, task=task)


def agent_info(
    agent_id: str,
    capabilities: list[str],
    *,
    heartbeat_at: datetime | None = None,
    status: str = "ready",
) -> AgentInfo:
    now = utcnow()
    return AgentInfo(
        agent_id=agent_id,
        name=f"name-{agent_id}",
        capabilities=capabilities,
        started_at=now - timedelta(seconds=1),
        heartbeat_at=heartbeat_at or now,
        status=status,  # type: ignore[arg-type]
        node_id="node-a",
    )


def node_info(node_id: str) -> NodeInfo:
    now = utcnow()
    return NodeInfo(node_id=node_id, runtime="process", started_at=now, heartbeat_at=now)


async def heartbeat(bus: Bus, info: AgentInfo) -> None:
    """Write one heartbeat as an agent does."""
    kv = await bus.kv(bus.names.agents_bucket)
    await kv.put(info.agent_id, encode(msgspec.structs.replace(info, heartbeat_at=utcnow())))


async def next_event(
    bus: Bus, entity: str, kind: str, type_: type[Message], *, timeout_s: float
) -> Message:
    """The first event on ``<p>.events.<entity>.<kind>`` (from the stream's start)."""
    sub = await bus.js.subscribe(
        bus.names.event_subject(entity, kind),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        msg = await sub.next_msg(timeout=timeout_s)
        return msgspec.json.decode(msg.data, type=type_)
    finally:
        await sub.unsubscribe()
