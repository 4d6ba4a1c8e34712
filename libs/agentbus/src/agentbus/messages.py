"""The wire contract: every payload on the bus, as tagged, frozen msgspec Structs.

Every message is JSON with a ``"type"`` member naming its class, so ``nats sub`` and
``nats kv get`` show readable payloads and a reader can dispatch on the type. Rules
(msgspec's schema-evolution guide): new fields get defaults, a field's type never
changes, unknown fields are ignored by readers. Times are RFC 3339 UTC strings.
``docs/protocol.md`` says which message goes on which subject; the JSON Schema in
``libs/agentbus/schema/messages.json`` is generated from this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

Token = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
"""A subject-safe identifier: capability, agent id, node id, deployment name."""

TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired", "dead"]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "cancelled", "expired", "dead"}
)
RuntimeKind = Literal["docker", "process"]
RestartPolicy = Literal["always", "on-failure", "never"]
NULL = msgspec.Raw(b"null")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of every payload on the bus; encodes with ``"type": "<ClassName>"``."""


# ---------------------------------------------------------------------------- shared
class ErrorInfo(Message, frozen=True, kw_only=True):
    """Why something failed: the exception type name and a one-line message."""

    error_type: str
    message: str
    retryable: bool = False


class BlobRef(Message, frozen=True, kw_only=True):
    """A value stored in the Object Store instead of inline (over the inline limit)."""

    bucket: str
    name: str
    size_bytes: int
    sha256: str


# ---------------------------------------------------------------------------- tasks
class SubmitTask(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.submit``): queue one task.

    ``task_id`` is the idempotency key: submitting the same id again returns the
    existing task unchanged. ``input`` is any JSON value; inputs over the inline limit
    travel as ``input_ref`` into the Object Store with ``input`` null.
    """

    capability: Token
    input: msgspec.Raw = NULL
    input_ref: BlobRef | None = None
    task_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")] | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    parent_id: str | None = None
    tenant: str | None = None
    metadata: dict[str, str] = {}


class SubmitTasks(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.submit_batch``): queue many tasks."""

    tasks: list[SubmitTask]


class Attempt(Message, frozen=True, kw_only=True):
    """One delivery of a task to an agent, as recorded by the scheduler."""

    number: int
    agent_id: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Literal["running", "succeeded", "failed"] = "running"
    error: ErrorInfo | None = None


class TaskRecord(Message, frozen=True, kw_only=True):
    """The task's state of record in KV ``<p>_tasks`` (key = task id)."""

    task_id: str
    capability: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    input: msgspec.Raw = NULL
    input_ref: BlobRef | None = None
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    parent_id: str | None = None
    tenant: str | None = None
    metadata: dict[str, str] = {}
    attempts: list[Attempt] = []
    agent_id: str | None = None
    output: msgspec.Raw = NULL
    output_ref: BlobRef | None = None
    error: ErrorInfo | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        """Whether the task has reached a final status."""
        return self.status in TERMINAL_STATUSES


class SubmitReply(Message, frozen=True, kw_only=True):
    """Reply to a submit: the task record and whether this call created it."""

    task: TaskRecord
    created: bool


class SubmitTasksReply(Message, frozen=True, kw_only=True):
    """Reply to a batch submit, one entry per submitted task, in order."""

    results: list[SubmitReply]


class GetTask(Message, frozen=True, kw_only=True):
    """Request to the scheduler (``<p>.scheduler.get``): one task record."""

    task_id: str


class TaskReply(Message, frozen=True, kw_only=True):
    """Reply carrying one task record."""

    task: TaskRecord


class Task(Message, frozen=True, kw_only=True):
    """A unit of work on the work stream ``<p>.tasks.<capability>``.

    Header ``Nats-Msg-Id`` = ``task_id``. The delivery count (attempt number) is the
    JetStream metadata ``num_delivered``.
    """

    task_id: str
    capability: str
    input: msgspec.Raw = NULL
    input_ref: BlobRef | None = None
    priority: int = 0
    timeout_s: float | None = None
    parent_id: str | None = None
    metadata: dict[str, str] = {}


class TaskStarted(Message, frozen=True, kw_only=True):
    """Agent report on ``<p>.results.<capability>``: a handler started the task."""

    task_id: str
    agent_id: str
    attempt: int
    started_at: datetime


class TaskResult(Message, frozen=True, kw_only=True):
    """Agent report on ``<p>.results.<capability>``: the attempt finished.

    ``status`` ``succeeded`` carries ``output`` (or ``output_ref``); ``failed`` carries
    ``error``. The scheduler applies the first result per task id and drops the rest.
    """

    task_id: str
    agent_id: str
    attempt: int
    status: Literal["succeeded", "failed"]
    started_at: datetime
    finished_at: datetime
    output: msgspec.Raw = NULL
    output_ref: BlobRef | None = None
    error: ErrorInfo | None = None


AgentReport = TaskStarted | TaskResult


# ---------------------------------------------------------------------------- events
class TaskEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.task.<status>``: a task changed status."""

    task_id: str
    capability: str
    status: TaskStatus
    at: datetime
    attempt: int = 0
    agent_id: str | None = None
    error: ErrorInfo | None = None


class AgentEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.agent.<kind>``: an agent joined, left or was lost."""

    agent_id: str
    kind: Literal["joined", "left", "lost"]
    at: datetime
    name: str = ""
    node_id: str | None = None


class ReplicaEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.replica.<kind>``: a supervisor acted on a replica."""

    node_id: str
    deployment: str
    replica: int
    kind: Literal["started", "exited", "restarting", "stopped", "failed"]
    at: datetime
    agent_id: str = ""
    exit_code: int | None = None
    restarts: int = 0
    reason: str = ""


class ErrorEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.error.<service>``: a message could not be processed."""

    service: str
    subject: str
    reason: str
    at: datetime


class NodeEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.node.<kind>``: a node joined, left or was lost.

    ``left``: its supervisor deleted its entry; ``lost``: the entry expired (TTL).
    """

    node_id: str
    kind: Literal["joined", "left", "lost"]
    at: datetime


# -------------------------------------------------------------------------- registry
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
    replicas: int = 0
    hostname: str = ""


class ListAgents(Message, frozen=True, kw_only=True):
    """Request to the registry (``<p>.registry.agents``), optionally by capability."""

    capability: str | None = None


class AgentsReply(Message, frozen=True, kw_only=True):
    """Live agents, sorted by agent id."""

    agents: list[AgentInfo]


class ListNodes(Message, frozen=True, kw_only=True):
    """Request to the registry (``<p>.registry.nodes``)."""


class NodesReply(Message, frozen=True, kw_only=True):
    """Live nodes, sorted by node id."""

    nodes: list[NodeInfo]


# ----------------------------------------------------------------------------- fleet
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


# ------------------------------------------------------------------------ checkpoint
class PutCheckpoint(Message, frozen=True, kw_only=True):
    """Command to the checkpoint service (``<p>.checkpoint.put``)."""

    agent_id: str
    thread_id: str
    data: bytes
    parent_id: str | None = None
    metadata: dict[str, str] = {}
    data_ref: BlobRef | None = None
    """A value too large for one request: upload it first with ``blobs.put_blob`` under
    ``checkpoints/sha256/<hex digest>`` and send ``data`` empty with this reference."""


class GetCheckpoint(Message, frozen=True, kw_only=True):
    """Request to the checkpoint service (``<p>.checkpoint.get``): latest or by id."""

    agent_id: str
    thread_id: str
    checkpoint_id: str | None = None


class Checkpoint(Message, frozen=True, kw_only=True):
    """One version of an agent's state on a thread."""

    checkpoint_id: str
    agent_id: str
    thread_id: str
    version: int
    created_at: datetime
    sha256: str
    data: bytes = b""
    data_ref: BlobRef | None = None
    parent_id: str | None = None
    metadata: dict[str, str] = {}


class CheckpointReply(Message, frozen=True, kw_only=True):
    """Reply carrying one checkpoint."""

    checkpoint: Checkpoint


class CheckpointHead(Message, frozen=True, kw_only=True):
    """KV ``<p>_checkpoints`` value at ``<agent>.<thread>.latest``: the thread's head."""

    checkpoint_id: str
    version: int
    updated_at: datetime


# -------------------------------------------------------------------------- services
class GetHealth(Message, frozen=True, kw_only=True):
    """Request to a service's ``<p>.<service>.health`` endpoint (no fields)."""


class HealthReply(Message, frozen=True, kw_only=True):
    """A service's health: ``ok`` when it can do its work, else ``degraded``.

    ``details`` holds short, low-cardinality facts, e.g. ``{"nats": "connected"}``.
    """

    service: str
    status: Literal["ok", "degraded"] = "ok"
    details: dict[str, str] = {}


# ---------------------------------------------------------------------------- codecs
encoder = msgspec.json.Encoder()
encode = encoder.encode
decode_report = msgspec.json.Decoder(AgentReport).decode
decode_task = msgspec.json.Decoder(Task).decode
decode_record = msgspec.json.Decoder(TaskRecord).decode

ALL_MESSAGES: tuple[type[Message], ...] = (
    ErrorInfo, BlobRef, SubmitTask, SubmitTasks, Attempt, TaskRecord, SubmitReply,
    SubmitTasksReply, GetTask, TaskReply, Task, TaskStarted, TaskResult, TaskEvent,
    AgentEvent, ReplicaEvent, ErrorEvent, AgentInfo, NodeInfo, ListAgents, AgentsReply,
    ListNodes, NodesReply, Deployment, Deploy, DeleteDeployment, Placement, DeployReply,
    PutCheckpoint, GetCheckpoint, Checkpoint, CheckpointReply,
    NodeEvent, CheckpointHead,
    GetNodeStatus, ReplicaStatus, NodeStatusReply,
    GetHealth, HealthReply,
)  # fmt: skip
