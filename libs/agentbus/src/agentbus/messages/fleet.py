"""The fleet: deployments, placements and supervisor status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import (
    Backoff,
    Message,
    RestartPolicy,
    Token,
)
from agentbus.messages.registry import NodeInfo
from agentbus.messages.secrets import SealedSecret
from agentbus.messages.topics import Subscription
from agentbus.messages.traces import TraceKind


class Limits(Message, frozen=True, kw_only=True):
    """Hard limits of one replica, enforced by the runtime (cgroups on docker/podman).

    ``memory_bytes``: past it the replica is OOM-killed (and restarted by policy);
    ``cpus``: CPU quota in cores (0.5 = half a core); ``pids``: max processes/threads.
    """

    memory_bytes: Annotated[int, msgspec.Meta(ge=4 * 1024 * 1024)] | None = None
    cpus: Annotated[float, msgspec.Meta(gt=0)] | None = None
    pids: Annotated[int, msgspec.Meta(ge=8)] | None = None


class Resources(Message, frozen=True, kw_only=True):
    """What one replica declares it needs; placement fits it into node capacity."""

    cpus: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


class HealthCheck(Message, frozen=True, kw_only=True):
    """A command run inside the replica every ``interval_s``; exit 0 = healthy.

    ``retries`` consecutive failures (each bounded by ``timeout_s``) after
    ``start_period_s`` make the replica unhealthy, and the supervisor restarts it.
    """

    command: list[str]
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    retries: Annotated[int, msgspec.Meta(ge=1)] = 3
    start_period_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class CrashLoop(Message, frozen=True, kw_only=True):
    """``max_restarts`` restarts within ``window_s`` mark a replica ``crash-loop``."""

    max_restarts: Annotated[int, msgspec.Meta(ge=1)] = 5
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


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
    backoff: Backoff = Backoff(initial_s=0.5, factor=2.0, max_s=30.0)
    backoff_reset_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """Uptime after which a replica counts as healthy and its backoff starts over."""
    crash_loop: CrashLoop = CrashLoop()
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 1
    image_command: list[str] | None = None
    """Overrides the image's CMD on docker nodes (``command`` is for processes)."""
    limits: Limits = Limits()
    resources: Resources = Resources()
    health: HealthCheck | None = None
    heartbeat_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = 15.0
    """A running replica whose agent has not heartbeated for this long is restarted
    (hung process); ``None`` disables the check."""
    node_selector: dict[str, str] = {}
    """Placement constraint: only nodes whose labels include all these pairs."""
    spread: Literal["node", "none"] = "node"
    """``node``: spread replicas evenly over eligible nodes; ``none``: pack."""
    stop_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """SIGTERM, then this long to finish or return the task, then SIGKILL."""
    warm_spares: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Started, imported agents without an identity that each node running replicas of
    the deployment keeps waiting: a replica that dies (or a new one) takes one over
    instead of starting cold (``docs/decisions/0013-warm-spares.md``). Only for agents
    of the agentbus runtime (``Agent.main``); each costs an idle agent's memory."""
    subscriptions: list[Subscription] = []
    """Topic patterns the deployment's agents listen to (shown by ``agentbus ps``)."""
    publishes: list[str] = []
    """Topic patterns the deployment's agents publish events on. With credentials its
    supervisor mints, the only topics they may publish on (``docs/protocol.md``,
    "Permissions")."""
    asks: list[str] = []
    """Ask capabilities its agents answer (``@agent.on_ask``) besides ``capabilities``;
    with minted credentials, the only asks they may answer."""
    trace_kinds: list[TraceKind] = []
    """Trace kinds the deployment's agents deposit on, sense and claim; with minted
    credentials, the only ones (their supervisor creates the missing ones)."""
    secret_env: dict[str, SealedSecret] = {}
    """Env values that only the supervisors can read (sealed to the fleet's secrets
    key by ``agentbus apply``); a name must not also be in ``env``."""


class Deploy(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.deploy``): create or update."""

    deployment: Deployment


class DeleteDeployment(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.delete``): remove every replica."""

    name: Token


class ScaleDeployment(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.scale``): set ``replicas`` only.

    A compare-and-set on the stored spec, so a concurrent ``deploy`` of other fields
    is never undone (the scale is retried on the newer spec).
    """

    name: Token
    replicas: Annotated[int, msgspec.Meta(ge=0, le=1000)]


class Placement(Message, frozen=True, kw_only=True):
    """KV ``<p>_placements`` entry (key ``<deployment>.<replica>``): where it runs."""

    deployment: str
    replica: int
    node_id: str
    placed_at: datetime


class UnplacedReplica(Message, frozen=True, kw_only=True):
    """A replica that no live node can take now; placement retries on every change.

    ``reason`` names the rule that excluded the last candidates, e.g. ``no live node
    matches node_selector {'gpu': 'yes'}`` or ``no eligible node has 2.0 cpus free``.
    """

    deployment: str
    replica: int
    reason: str


DeploymentChange = Literal["created", "updated", "unchanged", "deleted"]


class DeployReply(Message, frozen=True, kw_only=True):
    """Reply to deploy: the stored spec, its current placements and unplaced replicas."""

    deployment: Deployment
    placements: list[Placement] = []
    unplaced: list[UnplacedReplica] = []
    change: DeploymentChange | None = None
    """What the request did to the stored spec (None from older schedulers)."""


class ListPlacements(Message, frozen=True, kw_only=True):
    """Request to the scheduler (``<p>.scheduler.placements``), optionally of one deployment."""

    deployment: Token | None = None


class PlacementsReply(Message, frozen=True, kw_only=True):
    """Placements (by deployment, replica) and the replicas that could not be placed."""

    placements: list[Placement] = []
    unplaced: list[UnplacedReplica] = []


PlacementKind = Literal["placed", "moved", "removed", "unplaced"]


class PlacementEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.placement.<kind>``: the placing scheduler changed a placement.

    ``placed``: a replica got a node; ``moved``: it left ``previous_node_id`` (lost,
    ineligible or over capacity, see ``reason``) for ``node_id``; ``removed``: scaled
    down, deleted, or its node was lost with no other node to take it; ``unplaced``:
    no node can take it now (emitted when the reason changes, not on every pass).
    ``scheduler_id`` is the instance holding the placement lease.
    """

    deployment: str
    replica: int
    kind: PlacementKind
    at: datetime
    node_id: str | None = None
    previous_node_id: str | None = None
    reason: str = ""
    scheduler_id: str = ""


class GetNodeStatus(Message, frozen=True, kw_only=True):
    """Request to one supervisor (``<p>.supervisor.<node_id>.status``)."""


ReplicaState = Literal[
    "starting",
    "running",
    "backoff",
    "crash-loop",
    "exited",
    "failed",
    "stopping",
    "pulling",
    "image-pull-failed",
]


class ReplicaStatus(Message, frozen=True, kw_only=True):
    """One replica a supervisor runs, as its ``status`` endpoint reports it.

    ``state``: ``backoff`` waits ``backoff_s`` seconds before a restart; ``exited``
    ended and its restart policy does not restart it; ``failed`` could not be
    started (e.g. a bad command); ``pulling``: its image is being pulled;
    ``image-pull-failed``: the pull failed (``reason``), retried with backoff.
    ``runtime_id`` is the container id or the pid.

    ``cpu_cores`` (CPU in use, in cores: 0.12 is 12 % of one core) and
    ``memory_bytes`` (resident memory, page cache excluded) are what the supervisor
    last measured of a running replica (every ``usage_sample_s``); None while not
    measured (not running yet, sampling off, or the runtime could not tell).
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
    cpu_cores: float | None = None
    memory_bytes: int | None = None


class NodeStatusReply(Message, frozen=True, kw_only=True):
    """Reply of a supervisor's ``status`` endpoint: its node entry and replicas."""

    node: NodeInfo
    replicas: list[ReplicaStatus] = []


class LogLine(Message, frozen=True, kw_only=True):
    """One output line of a replica on ``<p>.logs.<agent_id>`` (stream ``<P>_LOGS``).

    Shipped by the supervisor of ``node_id``: ``stream`` is ``stdout`` or ``stderr``,
    ``at`` when the runtime read it (Docker's own timestamp for containers), ``line``
    the text without its newline (cut at the supervisor's ``log_line_max_bytes``;
    ``truncated`` then true). ``runtime_id`` is the container id or pid, so lines of
    successive instances of one agent can be told apart.
    """

    agent_id: str
    node_id: str
    stream: Literal["stdout", "stderr"]
    at: datetime
    line: str
    runtime_id: str = ""
    truncated: bool = False


MESSAGES: tuple[type[Message], ...] = (
    Deployment,
    Deploy,
    DeleteDeployment,
    ScaleDeployment,
    Placement,
    UnplacedReplica,
    DeployReply,
    ListPlacements,
    PlacementsReply,
    PlacementEvent,
    GetNodeStatus,
    ReplicaStatus,
    NodeStatusReply,
    LogLine,
)
