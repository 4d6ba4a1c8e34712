"""Helpers of the supervisor tests: node settings, replica events, fleet KV writes, status."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import (
    AgentInfo,
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
from tests._harness.services import serving

BASE_IMAGE = "agentbus/base:bookworm"
TEST_LABELS = {"agentbus.test": "1"}
SLEEP_CMD = ["python3", "-c", "import time; time.sleep(600)"]


def process_settings(node_id: str, **overrides: Any) -> SupervisorSettings:
    """A ``process`` node: heartbeats every 0.2 s, 2 s stop grace."""
    base: dict[str, Any] = {
        "node_id": node_id,
        "runtime": "process",
        "heartbeat_s": 0.2,
        "stop_grace_s": 2.0,
    }
    return SupervisorSettings(**(base | overrides))


def docker_settings(node_id: str, **overrides: Any) -> SupervisorSettings:
    """A ``docker`` node: heartbeats every 0.5 s, 2 s stop grace, containers labelled
    ``TEST_LABELS`` on the host network (agents reach the test nats-server on 127.0.0.1).
    """
    base: dict[str, Any] = {
        "node_id": node_id,
        "runtime": "docker",
        "heartbeat_s": 0.5,
        "stop_grace_s": 2.0,
        "docker_network": "host",
        "docker_labels": TEST_LABELS,
    }
    return SupervisorSettings(**(base | overrides))


def echo_process(name: str, **fields: Any) -> Deployment:
    """The echo agent (capability ``echo``) as a local process, heartbeating every 0.5 s."""
    return Deployment(
        name=name,
        command=[sys.executable, "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
        **fields,
    )


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


@asynccontextmanager
async def running_supervisor(
    bus: Bus,
    settings: SupervisorSettings,
    registry: CollectorRegistry | None = None,
    *,
    probe: Bus | None = None,
) -> AsyncIterator[None]:
    """The supervisor in-process on ``bus`` (metrics on ``registry``); status answers on entry.

    ``probe``: the connection that asks (default ``bus``; with auth on, another
    identity than the supervisor's).
    """
    subject = f"{bus.names.prefix}.supervisor.{settings.node_id}.status"
    asker = probe or bus

    async def answers() -> bool:
        try:
            await asker.request(subject, GetNodeStatus(), NodeStatusReply, timeout_s=0.5)
        except Exception:
            return False
        return True

    async with serving(
        lambda stop: serve(bus, stop, settings, registry or CollectorRegistry()),
        answers,
        what="supervisor",
        ready_timeout_s=20,
        stop_timeout_s=30,
    ):
        yield


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


def registered(bus: Bus, agent_id: str) -> Callable[[], Awaitable[AgentInfo | None]]:
    """A probe: the registry entry of ``agent_id``, None while it has none."""

    async def _probe() -> AgentInfo | None:
        kv = await bus.kv(bus.names.agents_bucket)
        try:
            entry = await kv.get(agent_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:  # the marker a TTL expiry leaves (nats-py returns it as is)
            return None
        return msgspec.json.decode(entry.value, type=AgentInfo)

    return _probe


async def remove_node_containers(docker: aiodocker.Docker, node_id: str) -> None:
    """Remove (by id, forced) every container labelled with node ``node_id``."""
    filters = json.dumps({"label": [f"agentbus.node={node_id}"]})
    for c in await docker.containers.list(all=True, filters=filters):
        try:
            await docker.containers.container(c.id).delete(force=True)
        except aiodocker.DockerError:
            pass


async def stream_bytes(bus: Bus, stream: str) -> list[bytes]:
    """Every stored message of ``stream`` as raw bytes: subject, headers and payload."""
    info = await bus.js.stream_info(stream)
    out = []
    if not info.state.messages:
        return []  # a new stream says first_seq 0, which get_msg refuses
    for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue  # deleted or expired meanwhile
        headers = json.dumps(msg.headers or {}).encode()
        out.append(b"\n".join([(msg.subject or "").encode(), headers, msg.data or b""]))
    return out
