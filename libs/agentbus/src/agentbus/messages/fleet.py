"""The fleet: deployments, placements and supervisor status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import (
    Message,
    RestartPolicy,
    Token,
)
from agentbus.messages.registry import NodeInfo


class Deployment(Message, frozen=True, kw_only=True):
    """A set of identical agent replicas (KV ``<p>_deployments``, key = name).

    ``image`` is run by the docker runtime (with its own CMD, or ``image_command``),
    ``command`` (argv) by the process runtime; a deployment may give both, and then
    runs on either kind of node.
    """

    name: Token
    replicas: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1
    image: str | None = None
    command: list[str] | None = None
    capabilities: list[str] = []
    env: dict[str, str] = {}
    restart_policy: RestartPolicy = "always"
    backoff_initial_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    backoff_factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    backoff_max_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 1
    image_command: list[str] | None = None
    """Overrides the image's CMD on docker nodes (``command`` is for processes)."""


class Deploy(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.deploy``): create or update."""

    deployment: Deployment


class DeleteDeployment(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.delete``): remove every replica."""

    name: str


class Placement(Message, frozen=True, kw_only=True):
    """KV ``<p>_placements`` entry (key ``<deployment>.<replica>``): where it runs."""

    deployment: str
    replica: int
    node_id: str
    placed_at: datetime


class DeployReply(Message, frozen=True, kw_only=True):
    """Reply to deploy: the stored spec and its current placements."""

    deployment: Deployment
    placements: list[Placement] = []


class GetNodeStatus(Message, frozen=True, kw_only=True):
    """Request to one supervisor (``<p>.supervisor.<node_id>.status``)."""


ReplicaState = Literal["starting", "running", "backoff", "exited", "failed", "stopping"]


class ReplicaStatus(Message, frozen=True, kw_only=True):
    """One replica a supervisor runs, as its ``status`` endpoint reports it.

    ``state``: ``backoff`` waits ``backoff_s`` seconds before a restart; ``exited``
    ended and its restart policy does not restart it; ``failed`` could not be
    started (e.g. a missing image). ``runtime_id`` is the container id or the pid.
    """

    deployment: str
    replica: int
    agent_id: str
    state: ReplicaState
    runtime_id: str = ""
    restarts: int = 0
    exit_code: int | None = None
    backoff_s: float | None = None
    started_at: datetime | None = None
    reason: str = ""


class NodeStatusReply(Message, frozen=True, kw_only=True):
    """Reply of a supervisor's ``status`` endpoint: its node entry and replicas."""

    node: NodeInfo
    replicas: list[ReplicaStatus] = []


MESSAGES: tuple[type[Message], ...] = (
    Deployment,
    Deploy,
    DeleteDeployment,
    Placement,
    DeployReply,
    GetNodeStatus,
    ReplicaStatus,
    NodeStatusReply,
)
