"""The fleet as ``agentbus ps`` and ``agentbus nodes`` show it, gathered from the bus.

Sources, read concurrently: the deployment specs (KV ``<p>_deployments``), the
placements and unplaced replicas (the scheduler's ``placements`` endpoint; KV
``<p>_placements`` if no scheduler answers), the live nodes (KV ``<p>_nodes``), each
node's supervisor (``<p>.supervisor.<node>.status``) and the agent registry (KV
``<p>_agents``). One row per desired replica, plus the replicas a supervisor still
runs that are no longer desired there (being stopped or moved).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import datetime

import msgspec

from agentbus.client import Client
from agentbus.errors import AgentBusError, NotFoundError
from agentbus.messages import (
    AgentInfo,
    Deployment,
    NodeInfo,
    NodeStatusReply,
    Placement,
    ReplicaStatus,
    UnplacedReplica,
)
from agentbus.names import replica_agent_id

STATUS_TIMEOUT_S = 2.0
"""How long one supervisor's ``status`` may take before its replicas show ``unknown``."""


class ReplicaView(msgspec.Struct, frozen=True, kw_only=True):
    """One replica as ``ps`` shows it.

    ``state`` is the supervisor's ``ReplicaState`` (``running``, ``backoff``,
    ``crash-loop``, ...), or ``pending`` (placed, not yet reported by its node),
    ``unplaced`` (no node can take it; ``reason`` says why) or ``unknown`` (its node's
    supervisor does not answer). ``agent`` is the registry status of its agent
    (``ready``, ``busy``, ``stopping``), None while it is not registered. ``desired``
    is false for a replica a supervisor still runs but no longer should.
    ``cpu_cores`` and ``memory_bytes`` are what its supervisor last measured
    (``ReplicaStatus``); None when unknown.
    """

    deployment: str
    replica: int
    agent_id: str
    state: str
    node_id: str | None = None
    agent: str | None = None
    restarts: int = 0
    started_at: datetime | None = None
    exit_code: int | None = None
    backoff_s: float | None = None
    reason: str = ""
    desired: bool = True
    cpu_cores: float | None = None
    memory_bytes: int | None = None


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    """A live node with what is placed on it: replica count and declared CPU/memory."""

    node: NodeInfo
    placed: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0


class FleetView(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``ps`` prints; ``unreachable`` lists nodes whose supervisor did not answer."""

    replicas: list[ReplicaView]
    deployments: dict[str, Deployment]
    unreachable: list[str] = []


async def _placements(client: Client) -> tuple[list[Placement], list[UnplacedReplica]]:
    try:
        reply = await client.placements()
        return reply.placements, reply.unplaced
    except AgentBusError:  # no scheduler: the KV still says where replicas go
        found = await client.bucket_values(client.names.placements_bucket, Placement)
        return list(found.values()), []


async def _status(client: Client, node_id: str) -> NodeStatusReply | None:
    try:
        return await client.node_status(node_id, timeout_s=STATUS_TIMEOUT_S)
    except AgentBusError:
        return None


async def fleet_view(client: Client, name: str | None = None) -> FleetView:
    """The replicas of every deployment (or of ``name``), by deployment and replica.

    Raises:
        NotFoundError: ``name`` is neither a deployment nor run by any node.
    """
    deployments, (placements, unplaced), nodes, agents = await asyncio.gather(
        client.deployments(),
        _placements(client),
        client.bucket_values(client.names.nodes_bucket, NodeInfo),
        client.bucket_values(client.names.agents_bucket, AgentInfo),
    )
    node_ids = sorted(set(nodes) | {p.node_id for p in placements})
    replies = await asyncio.gather(*(_status(client, n) for n in node_ids))
    statuses = dict(zip(node_ids, replies, strict=True))
    running: dict[tuple[str, int, str], ReplicaStatus] = {
        (r.deployment, r.replica, node): r
        for node, reply in statuses.items()
        if reply is not None
        for r in reply.replicas
    }
    where = {(p.deployment, p.replica): p.node_id for p in placements}
    why = {(u.deployment, u.replica): u.reason for u in unplaced}
    rows: list[ReplicaView] = []
    for d in deployments.values():
        if name is not None and d.name != name:
            continue
        for r in range(d.replicas):
            node = where.get((d.name, r))
            agent_id = replica_agent_id(d.name, r)
            agent = agents[agent_id].status if agent_id in agents else None
            if node is None:
                reason = why.get((d.name, r), "not placed yet")
                rows.append(
                    ReplicaView(
                        deployment=d.name,
                        replica=r,
                        agent_id=agent_id,
                        state="unplaced",
                        agent=agent,
                        reason=reason,
                    )
                )
            elif (status := running.pop((d.name, r, node), None)) is not None:
                rows.append(_row(status, node, agent))
            elif statuses.get(node) is None:
                rows.append(
                    ReplicaView(
                        deployment=d.name,
                        replica=r,
                        agent_id=agent_id,
                        state="unknown",
                        node_id=node,
                        agent=agent,
                        reason=f"node {node} does not answer",
                    )
                )
            else:
                rows.append(
                    ReplicaView(
                        deployment=d.name,
                        replica=r,
                        agent_id=agent_id,
                        state="pending",
                        node_id=node,
                        agent=agent,
                    )
                )
    for (dep, _, node), status in running.items():  # run, but no longer wanted there
        if name is None or dep == name:
            agent = agents[status.agent_id].status if status.agent_id in agents else None
            rows.append(_row(status, node, agent, desired=False))
    if name is not None and not rows and name not in deployments:
        raise NotFoundError(f"deployment {name!r} not found")
    rows.sort(key=lambda v: (v.deployment, v.replica, not v.desired, v.node_id or ""))
    unreachable = [n for n, reply in statuses.items() if reply is None]
    return FleetView(replicas=rows, deployments=deployments, unreachable=unreachable)


def _row(
    status: ReplicaStatus, node: str, agent: str | None, *, desired: bool = True
) -> ReplicaView:
    return ReplicaView(
        deployment=status.deployment,
        replica=status.replica,
        agent_id=status.agent_id,
        state=status.state,
        node_id=node,
        agent=agent,
        restarts=status.restarts,
        started_at=status.started_at,
        exit_code=status.exit_code,
        backoff_s=status.backoff_s,
        reason=status.reason,
        desired=desired,
        cpu_cores=status.cpu_cores,
        memory_bytes=status.memory_bytes,
    )


async def node_views(client: Client) -> list[NodeView]:
    """Live nodes with the replicas placed on each and the CPU/memory they declare."""
    nodes, deployments, (placements, _) = await asyncio.gather(
        client.bucket_values(client.names.nodes_bucket, NodeInfo),
        client.deployments(),
        _placements(client),
    )
    placed: Counter[str] = Counter()
    cpus: defaultdict[str, float] = defaultdict(float)
    memory: Counter[str] = Counter()
    for p in placements:
        placed[p.node_id] += 1
        if (d := deployments.get(p.deployment)) is not None:
            cpus[p.node_id] += d.resources.cpus
            memory[p.node_id] += d.resources.memory_bytes
    return [
        NodeView(node=n, placed=placed[i], cpus=cpus[i], memory_bytes=memory[i])
        for i, n in nodes.items()
    ]
