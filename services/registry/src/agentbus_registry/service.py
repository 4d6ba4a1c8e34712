"""The registry service: who is alive, answered from a watched in-memory view.

Agents put ``AgentInfo`` heartbeats into KV ``<p>_agents`` and supervisors put
``NodeInfo`` into ``<p>_nodes`` (key = id, bucket TTL 10 s with limit markers). The
registry mirrors both buckets (``view.LiveView``, built on ``agentbus.kv.mirror``),
announces joins, leaves (key deleted), losses (TTL expiry) and two live instances
of one id (``DuplicateEvent``, ``<p>.events.<entity>.duplicate``) on
``<p>.events.agent.<kind>`` (``AgentEvent``) and ``<p>.events.node.<kind>``
(``NodeEvent``), and serves the ``nats.micro`` service
``registry``:

* ``<p>.registry.agents``: ``ListAgents`` → ``AgentsReply`` (optionally only agents
  with ``capability``; sorted by agent id);
* ``<p>.registry.nodes``: ``ListNodes`` → ``NodesReply`` (sorted by node id).

Replies list only entries seen within ``stale_after_s`` (the TTL), so an agent that
stopped heartbeating disappears on time even if its expiry marker is late. The
registry holds no state of its own: any number of instances can run, and a
restarted one rebuilds its view from the buckets.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import (
    AgentEvent,
    AgentInfo,
    AgentsReply,
    ListAgents,
    ListNodes,
    NodeEvent,
    NodeInfo,
    NodesReply,
    utcnow,
)
from agentbus.service import MicroService, ServiceMetrics
from agentbus_registry.metrics import RegistryMetrics
from agentbus_registry.settings import RegistrySettings
from agentbus_registry.view import Kind, LiveView

SERVICE = "registry"
_AGENT_STATUSES = ("ready", "busy", "stopping")
_WATCH_STOP_S = 5.0
"""How long the watches may take to end after ``stop`` before they are cancelled."""


def _agent_event(key: str, kind: Kind, info: AgentInfo) -> AgentEvent:
    return AgentEvent(agent_id=key, kind=kind, at=utcnow(), name=info.name, node_id=info.node_id)


def _agent_instance(info: AgentInfo) -> str:
    where = f" on node {info.node_id}" if info.node_id else ""
    return f"{info.hostname or '?'} pid {info.pid}{where}, started {info.started_at.isoformat()}"


def _node_instance(info: NodeInfo) -> str:
    return f"{info.hostname or '?'}, started {info.started_at.isoformat()}"


def _node_event(key: str, kind: Kind, info: NodeInfo) -> NodeEvent:
    return NodeEvent(node_id=key, kind=kind, at=utcnow())


async def serve(
    bus: Bus, stop: asyncio.Event, settings: RegistrySettings, registry: CollectorRegistry
) -> None:
    """Run the registry until ``stop`` is set, then stop watching and serving.

    Endpoints are registered once both buckets have been replayed (or after
    ``settings.ready_timeout_s``), so the first answers are already complete.
    """
    service_metrics = ServiceMetrics(SERVICE, registry)
    metrics = RegistryMetrics(registry)
    agents: LiveView[AgentInfo] = LiveView(
        bus,
        entity="agent",
        bucket=bus.names.agents_bucket,
        type_=AgentInfo,
        id_of=lambda info: info.agent_id,
        instance_of=_agent_instance,
        event=_agent_event,
        service_metrics=service_metrics,
        metrics=metrics,
        stale_after_s=settings.stale_after_s,
        replay_announce_window_s=settings.replay_announce_window_s,
    )
    nodes: LiveView[NodeInfo] = LiveView(
        bus,
        entity="node",
        bucket=bus.names.nodes_bucket,
        type_=NodeInfo,
        id_of=lambda info: info.node_id,
        instance_of=_node_instance,
        event=_node_event,
        service_metrics=service_metrics,
        metrics=metrics,
        stale_after_s=settings.stale_after_s,
        replay_announce_window_s=settings.replay_announce_window_s,
    )
    watching = asyncio.Event()  # set to end the watches, after the endpoints stopped
    watches = [asyncio.create_task(view.run(watching)) for view in (agents, nodes)]
    micro = MicroService(bus, SERVICE, service_metrics, description="agentbus registry")
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.ready_timeout_s):
                await agents.ready.wait()
                await nodes.ready.wait()
        if not (agents.ready.is_set() and nodes.ready.is_set()):
            logger.warning("registry serving before the initial replay finished")

        async def list_agents(req: ListAgents) -> AgentsReply:
            live = agents.live()
            if req.capability is not None:
                live = [a for a in live if req.capability in a.capabilities]
            return AgentsReply(agents=live)

        async def list_nodes(req: ListNodes) -> NodesReply:
            return NodesReply(nodes=nodes.live())

        await micro.start()
        await micro.endpoint("agents", ListAgents, list_agents)
        await micro.endpoint("nodes", ListNodes, list_nodes)
        logger.info("registry serving", prefix=bus.names.prefix)
        while not stop.is_set():
            _refresh_gauges(metrics, agents.live(), nodes.live())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.gauge_refresh_s)
    finally:
        await micro.stop()
        watching.set()
        _, pending = await asyncio.wait(watches, timeout=_WATCH_STOP_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)


def _refresh_gauges(
    metrics: RegistryMetrics, agents: list[AgentInfo], nodes: list[NodeInfo]
) -> None:
    counts = dict.fromkeys(_AGENT_STATUSES, 0)
    for agent in agents:
        counts[agent.status] = counts.get(agent.status, 0) + 1
    for status, count in counts.items():
        metrics.agents.labels(status).set(count)
    metrics.nodes.set(len(nodes))
