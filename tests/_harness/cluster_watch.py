"""What the cluster chaos test watches: replicas per host, leases, nodes, task events.

Readers return None (or skip a host) when the bus does not answer: during the chaos
a server may be down and a connection reconnecting; the samplers simply try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus import Bus
from agentbus.errors import AgentBusError
from agentbus.kv.leader import leader_get
from agentbus.kv.lease import LeaseRecord
from agentbus.kv.replay import replay
from agentbus.messages import TERMINAL_STATUSES, AgentInfo, NodeInfo
from tests._harness.hosts import HostFleet

LIVE_STATES = ("starting", "running")
"""Replica states whose process is alive and working."""
S = TypeVar("S", bound=msgspec.Struct)
_FAILURES = (AgentBusError, nats.errors.Error, TimeoutError, OSError)


async def read_bucket(bus: Bus, bucket: str, type_: type[S]) -> dict[str, S] | None:
    """Every entry of KV ``bucket``, None when the bus did not answer."""
    try:
        return await replay(await bus.kv(bucket), type_, timeout_s=2.0)
    except _FAILURES:
        return None


async def agents(bus: Bus) -> dict[str, AgentInfo] | None:
    """Live agents by id (KV ``<p>_agents``), None when the bus did not answer."""
    found = await read_bucket(bus, bus.names.agents_bucket, AgentInfo)
    if found is None:
        return None
    return {k: a for k, a in found.items() if a.status != "stopping"}


async def nodes(bus: Bus) -> dict[str, NodeInfo] | None:
    """Live nodes by id (KV ``<p>_nodes``), None when the bus did not answer."""
    return await read_bucket(bus, bus.names.nodes_bucket, NodeInfo)


async def lease_holders(bus: Bus) -> dict[str, str] | None:
    """Holder by lease (KV ``<p>_leases``), None when the bus did not answer."""
    found = await read_bucket(bus, bus.names.leases_bucket, LeaseRecord)
    return None if found is None else {duty: r.holder for duty, r in found.items()}


@dataclass
class Census:
    """Samples, every ``every_s``, which host runs which replica and what KV says.

    ``duplicates``: ``(monotonic_s, agent_id, hosts)`` whenever one agent id was live
    (``LIVE_STATES``) in the status replies of two hosts' supervisors at once.
    ``flips``: ``(monotonic_s, agent_id, node_ids)`` whenever KV ``<p>_agents`` showed
    an agent id back on a node it had left (two live replicas heartbeating in turn).
    Entries are read from the bucket's stream leader (``leader_agents``): a replica
    catching up after its server restarted answers direct gets with entries of
    replicas long gone, which would read as flips.
    """

    bus: Bus
    fleet: HostFleet
    every_s: float = 0.2
    hosts: set[str] = field(default_factory=set)
    """The hosts asked (a dead host is removed, so its timeouts do not slow sampling)."""
    duplicates: list[tuple[float, str, list[str]]] = field(default_factory=list)
    flips: list[tuple[float, str, list[str]]] = field(default_factory=list)
    rounds: int = 0
    _seen: dict[str, list[str]] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set."""
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def sample(self) -> None:
        """One round: every host's status, then the agents bucket."""
        now = time.monotonic()
        hosts = sorted(self.hosts)
        replies = await asyncio.gather(
            *(self.fleet.node_status(self.bus, h, timeout_s=0.5) for h in hosts),
            return_exceptions=True,
        )
        where: dict[str, list[str]] = {}
        for host, reply in zip(hosts, replies, strict=True):
            if isinstance(reply, BaseException):
                continue
            for replica in reply.replicas:
                if replica.state in LIVE_STATES:
                    where.setdefault(replica.agent_id, []).append(host)
        for agent_id, on in where.items():
            if len(on) > 1:
                self.duplicates.append((now, agent_id, on))
        live = await self.leader_agents()
        for agent_id, info in (live or {}).items():
            history = self._seen.setdefault(agent_id, [])
            node = info.node_id or ""
            if history and history[-1] != node:
                if node in history:
                    self.flips.append((now, agent_id, [*history, node]))
                history.append(node)
            elif not history:
                history.append(node)
        self.rounds += 1

    async def leader_agents(self) -> dict[str, AgentInfo] | None:
        """Live agents by id as the agents bucket's leader has them (None: no answer).

        The ids are those of any replica's answer (``agents``) plus those seen before;
        each entry is then read from the leader.
        """
        listed = await agents(self.bus)
        if listed is None:
            return None
        bucket = self.bus.names.agents_bucket
        found: dict[str, AgentInfo] = {}
        for agent_id in sorted(set(listed) | set(self._seen)):
            try:
                entry = await leader_get(self.bus.js, bucket, agent_id)
            except _FAILURES:
                return None
            if entry is not None:
                info = msgspec.json.decode(entry[0], type=AgentInfo)
                if info.status != "stopping":
                    found[agent_id] = info
        return found


async def terminal_events(bus: Bus, *, timeout_s: float = 5.0) -> Counter[str]:
    """How many terminal ``TaskEvent``s the events stream holds, by task id.

    Read through an ephemeral pull consumer over ``<p>.events.task.<status>.*`` of
    each terminal status.
    """
    stream = bus.names.events_stream
    counts: Counter[str] = Counter()
    for status in sorted(TERMINAL_STATUSES):
        subject = bus.names.task_event_subject(status, "*")
        name = f"chaos-{uuid.uuid4().hex}"
        info = await bus.js.add_consumer(
            stream,
            ConsumerConfig(
                name=name,
                filter_subject=subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        pending = info.num_pending or 0
        try:
            sub = await bus.js.pull_subscribe_bind(name, stream=stream)
            while pending:
                msgs = await sub.fetch(min(pending, 1000), timeout=timeout_s)
                for msg in msgs:
                    pending = msg.metadata.num_pending
                    counts[msg.subject.rsplit(".", 1)[1]] += 1
            await sub.unsubscribe()
        finally:
            with contextlib.suppress(*_FAILURES):
                await bus.js.delete_consumer(stream, name)
    return counts


def read_probe(path: str) -> list[tuple[float, list[str]]]:
    """The samples a ``metrics_probe`` wrote: ``(monotonic_s, values)``."""
    samples = []
    with open(path) as lines:
        for line in lines:
            parts = line.split()
            if parts:
                samples.append((float(parts[0]), parts[1:]))
    return samples
