"""HTTP bodies of the fleet views: overview, deployments, scale (JSON, msgspec Structs).

Replicas are ``agentbus.fleet.view.ReplicaView`` rows (what ``agentbus ps`` shows);
CPU and memory are what deployments declare (``Resources``), not measured use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar.params import PathParameter

from agentbus.fleet.view import ReplicaView
from agentbus.messages import (
    Deployment,
    DeploymentChange,
    NodeInfo,
    Placement,
    Resources,
    RestartPolicy,
    UnplacedReplica,
)
from agentbus_gateway.models import TOKEN_PATTERN

DeploymentPath = Annotated[
    str,
    PathParameter(
        pattern=TOKEN_PATTERN,
        description="Deployment name: 1-64 characters of [a-z0-9_-]",
    ),
]


class NodeCard(msgspec.Struct, kw_only=True):
    """A live node with the replicas its supervisor reports (and those placed on it).

    ``cpus``/``memory_bytes``: what its placed replicas declare in total;
    ``reachable``: its supervisor answered the status request.
    """

    node: NodeInfo
    replicas: list[ReplicaView]
    placed: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0
    reachable: bool = True


class QueueDepth(msgspec.Struct, kw_only=True):
    """The tasks waiting in one priority band of one capability.

    ``pending``: queued and not yet delivered (the band consumer's ``num_pending``);
    ``in_flight``: delivered and not yet acknowledged (running); ``band``: the
    priority, 0 (lowest) .. 9.
    """

    capability: str
    band: int
    pending: int
    in_flight: int


class TaskRate(msgspec.Struct, kw_only=True):
    """Tasks that ended in the last ``window_s`` seconds, from the events stream.

    ``ended``: terminal task events (succeeded, failed, cancelled, expired, dead)
    stored in the window; ``succeeded``: those that succeeded; ``ended_per_s`` =
    ``ended / window_s``.
    """

    window_s: float
    ended: int
    succeeded: int
    ended_per_s: float


class Overview(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/overview``: the fleet at a glance.

    ``nodes``: live nodes, each with its replicas; ``unassigned``: replicas on no
    live node (unplaced with a reason, or placed on a node that is gone);
    ``queues``: depth per capability and band (bands with nothing pending nor in
    flight are left out); ``dead_letters``: dead tasks in the dead-letter index.
    """

    at: datetime
    nodes: list[NodeCard]
    unassigned: list[ReplicaView]
    queues: list[QueueDepth]
    dead_letters: int
    tasks: TaskRate


class DeploymentSummary(msgspec.Struct, kw_only=True):
    """A deployment's spec without its env values (``env_keys`` names them)."""

    name: str
    replicas: int
    image: str | None = None
    command: list[str] | None = None
    capabilities: list[str] = []
    env_keys: list[str] = []
    restart_policy: RestartPolicy = "always"
    max_concurrency: int = 1
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}


def summary(d: Deployment) -> DeploymentSummary:
    """The summary of ``d`` (env values left out: they may be secrets)."""
    return DeploymentSummary(
        name=d.name,
        replicas=d.replicas,
        image=d.image,
        command=d.command,
        capabilities=list(d.capabilities),
        env_keys=sorted(d.env),
        restart_policy=d.restart_policy,
        max_concurrency=d.max_concurrency,
        resources=d.resources,
        node_selector=dict(d.node_selector),
    )


class DeploymentView(msgspec.Struct, kw_only=True):
    """One deployment: its spec, replicas wanted and running, where each runs.

    ``placements``: replica -> node as the scheduler placed them; ``unplaced``:
    replicas no node can take, with the reason; ``replicas``: one row per desired
    replica (plus those still running where they are no longer wanted).
    """

    spec: DeploymentSummary
    replicas_wanted: int
    replicas_running: int
    placements: list[Placement]
    unplaced: list[UnplacedReplica]
    replicas: list[ReplicaView]


class DeploymentList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/deployments``, sorted by name."""

    deployments: list[DeploymentView]


class ScaleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/deployments/{name}/scale``: the new replica count."""

    replicas: Annotated[int, msgspec.Meta(ge=0, le=1000)]


class ScaleView(msgspec.Struct, kw_only=True):
    """Body of the scale answer: the stored spec and placements right after the change.

    ``change``: ``updated``, or ``unchanged`` when the count was already so.
    """

    spec: DeploymentSummary
    placements: list[Placement]
    unplaced: list[UnplacedReplica]
    change: DeploymentChange | None = None
