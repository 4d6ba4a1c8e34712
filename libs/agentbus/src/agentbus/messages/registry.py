"""Registry entries (agents, nodes) and the registry's requests and replies."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from agentbus.messages.common import (
    Message,
    RuntimeKind,
    Token,
)


class AgentInfo(Message, frozen=True, kw_only=True):
    """An agent's heartbeat entry in KV ``<p>_agents`` (key = agent id)."""

    agent_id: str
    name: str
    capabilities: list[str]
    started_at: datetime
    heartbeat_at: datetime
    status: Literal["ready", "busy", "stopping"] = "ready"
    in_flight: int = 0
    max_concurrency: int = 1
    node_id: str | None = None
    deployment: str | None = None
    replica: int | None = None
    pid: int | None = None
    hostname: str = ""
    version: str = ""


class NodeInfo(Message, frozen=True, kw_only=True):
    """A supervisor's heartbeat entry in KV ``<p>_nodes`` (key = node id)."""

    node_id: str
    runtime: RuntimeKind
    started_at: datetime
    heartbeat_at: datetime
    labels: dict[str, str] = {}
    capacity_replicas: int = 64
    capacity_cpus: float = 0.0
    """CPUs replicas may declare in total (``Resources.cpus``); 0 = not limited."""
    capacity_memory_bytes: int = 0
    """Memory replicas may declare in total; 0 = not limited."""
    replicas: int = 0
    hostname: str = ""
    images: list[str] = []
    """Image references (``repo:tag``) the node's engine has, refreshed about every
    minute; empty on a process node. ``agentbus apply`` warns about an image no node
    has (supervisors pull it at start)."""
    fenced: bool = False
    """The supervisor is fenced: cut off from the bus too long, it stopped its replicas
    and starts none until it has heartbeated and re-read its placements."""


class ListAgents(Message, frozen=True, kw_only=True):
    """Request to the registry (``<p>.registry.agents``), optionally by capability."""

    capability: Token | None = None


class AgentsReply(Message, frozen=True, kw_only=True):
    """Live agents, sorted by agent id."""

    agents: list[AgentInfo]


class ListNodes(Message, frozen=True, kw_only=True):
    """Request to the registry (``<p>.registry.nodes``)."""


class NodesReply(Message, frozen=True, kw_only=True):
    """Live nodes, sorted by node id."""

    nodes: list[NodeInfo]


MESSAGES: tuple[type[Message], ...] = (
    AgentInfo,
    NodeInfo,
    ListAgents,
    AgentsReply,
    ListNodes,
    NodesReply,
)
