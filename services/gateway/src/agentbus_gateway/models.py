"""HTTP request and response bodies of the gateway (JSON, msgspec Structs).

These are the gateway's HTTP contract, not wire messages: they are untagged, and
``TaskView`` carries a task's input and output as decoded JSON values where the
bus record (``agentbus.messages.TaskRecord``) keeps them as raw JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from agentbus.messages import (
    AgentInfo,
    Attempt,
    Backoff,
    BlobRef,
    ErrorInfo,
    NodeInfo,
    TaskRecord,
    TaskStatus,
    Token,
    encode,
)
from agentbus.messages.common import TASK_ID_PATTERN, TaskId
from agentbus.names import TOPIC_RE

Capability = Token
TOKEN_PATTERN: str = get_args(Token)[1].pattern
"""The rule of capability, agent, node and deployment names (``agentbus.names.check_token``)."""

TaskIdPath = Annotated[
    str,
    PathParameter(
        pattern=TASK_ID_PATTERN,
        description="Task id: 1-128 characters of [A-Za-z0-9_-]",
    ),
]
"""A task id in a URL path, checked before it reaches a subject or a KV key."""
CapabilityFilter = Annotated[
    str | None,
    QueryParameter(
        pattern=TOKEN_PATTERN,
        description="Only this capability: 1-64 characters of [a-z0-9_-]",
    ),
]
ParentFilter = Annotated[
    str | None,
    QueryParameter(
        pattern=TASK_ID_PATTERN,
        description="Only subtasks of this task: 1-128 characters of [A-Za-z0-9_-]",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        pattern=TASK_ID_PATTERN,
        description=(
            "Retry key, used as the task_id when the body has none (a body task_id "
            "that differs is a 400): 1-128 characters of [A-Za-z0-9_-]"
        ),
    ),
]

TopicPath = Annotated[
    str,
    PathParameter(
        pattern=TOPIC_RE.pattern,
        description="Event topic: 1-8 dot-separated tokens of [a-z0-9_-] (review.file_reviewed)",
    ),
]
EventKey = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description=(
            "Event key: events with one key are handled one at a time, in order "
            "(1-256 characters, no control characters)"
        ),
    ),
]
EventIdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        pattern=TASK_ID_PATTERN,
        description=(
            "Event id (Nats-Msg-Id): a repeat within 2 minutes is stored once (200, "
            "duplicate: true). Default a new id. 1-128 characters of [A-Za-z0-9_-]"
        ),
    ),
]


class EventPublished(msgspec.Struct, kw_only=True):
    """Body of the ``POST /v1/events/{topic}`` answer.

    ``seq``: the event's sequence in the ``<P>_TOPICS`` stream; ``duplicate``: an
    event with this id was stored already (``seq`` is that one's).
    """

    seq: int
    event_id: str
    duplicate: bool


class CreateTask(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/tasks``: one task for agents with ``capability``.

    ``task_id`` is the idempotency key (or the ``Idempotency-Key`` header): posting
    the same id again returns the existing task (200) instead of creating one (201).
    Unknown fields are refused (400).
    """

    capability: Capability
    input: Any = None
    task_id: TaskId | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    parent_id: TaskId | None = None
    """The parent task (404 if unknown)."""
    tenant: str | None = None
    metadata: dict[str, str] = {}
    deadline: datetime | None = None
    """Absolute time (with a UTC offset) after which the task never starts: it ends expired."""
    backoff: Backoff | None = None
    """Delay policy between attempts (default: 1 s doubling up to 60 s, half jittered)."""


class ResubmitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/tasks/{task_id}/resubmit`` (every field optional).

    The ended task stays as it is; a new task runs its input again with a fresh
    attempt budget (``resubmit_of`` = the old id).
    """

    new_task_id: TaskId | None = None
    """Id of the new task; default ``<task_id>-r<n>`` (repeating the call is idempotent)."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    deadline: datetime | None = None


class TaskView(msgspec.Struct, kw_only=True):
    """A task record as the gateway returns it (``input``/``output`` decoded).

    A value too large to travel inline is null with its ``*_ref`` set (a blob in
    the Object Store).
    """

    task_id: str
    capability: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    input: Any = None
    input_ref: BlobRef | None = None
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    parent_id: str | None = None
    tenant: str | None = None
    metadata: dict[str, str] = {}
    attempts: list[Attempt] = []
    agent_id: str | None = None
    output: Any = None
    output_ref: BlobRef | None = None
    error: ErrorInfo | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    backoff: Backoff | None = None
    children: list[str] = []
    stream_seq: int | None = None
    next_attempt_at: datetime | None = None
    resubmit_of: str | None = None
    handoff_to: str | None = None
    handoff_from: str | None = None
    output_url: str | None = None
    """Where to fetch the output (inline or stored) once the task succeeded, else null."""


VIEW_ONLY_FIELDS = ("output_url",)
"""``TaskView`` fields a ``TaskRecord`` does not have (they come last)."""
_decode_view = msgspec.json.Decoder(TaskView).decode


def output_path(task_id: str) -> str:
    """The gateway path of a task's output: ``/v1/tasks/<task_id>/output``."""
    return f"/v1/tasks/{task_id}/output"


def task_view(record: TaskRecord) -> TaskView:
    """The HTTP view of ``record`` (fields it does not know are dropped)."""
    view = _decode_view(encode(record))
    if record.status == "succeeded":
        view.output_url = output_path(record.task_id)
    return view


class TaskList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/tasks``: one page of matching tasks (see ``ListTasks``).

    ``next_cursor``: pass as ``cursor`` for the next page; null on the last one.
    """

    tasks: list[TaskView]
    total: int
    next_cursor: str | None = None


class AgentList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/agents``: live agents, sorted by agent id."""

    agents: list[AgentInfo]


class NodeList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/nodes``: live nodes, sorted by node id."""

    nodes: list[NodeInfo]


class Health(msgspec.Struct, kw_only=True):
    """Body of ``GET /healthz``: ``status`` ok with ``nats`` connected, else 503."""

    status: str
    nats: str


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong: a stable ``code``, a message and the offending field if any.

    Codes: ``bad_request``, ``not_found``, ``method_not_allowed``, ``conflict``,
    ``unavailable``, ``timeout``, ``internal`` (else ``http_<status>``).
    """

    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Body of every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class WaitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/tasks/wait``: wait for several tasks at once.

    Waits until every task (``until: all``) or one of them (``any``) has ended, or
    ``wait_s`` seconds (clamped to the gateway's ``max_wait_s``) have passed.
    """

    task_ids: Annotated[list[TaskId], msgspec.Meta(min_length=1, max_length=1000)]
    wait_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    until: Literal["all", "any"] = "all"
    follow_handoffs: bool = True
    """Report a task that handed off by the record of the task that took its work."""


class WaitReply(msgspec.Struct, kw_only=True):
    """Body of the ``POST /v1/tasks/wait`` answer.

    ``tasks``: one record per requested id, in request order (for a followed hand-off,
    the record of the task the chain ended in); ``pending``: the requested ids not
    ended yet.
    """

    tasks: list[TaskView]
    pending: list[str]


class CancelView(msgspec.Struct, kw_only=True):
    """Body of the ``POST /v1/tasks/{task_id}/cancel`` answer.

    ``task``: the task's record after the call (a task that had already ended keeps
    its status); ``cancelled``: every task id the call cancelled (the task, the task
    it handed off to, its descendants).
    """

    task: TaskView
    cancelled: list[str]


class SseEvent(msgspec.Struct, kw_only=True):
    """One message of an event stream (``text/event-stream``), as a client parses it.

    ``id``: the stream sequence; ``event``: the kind (``task.succeeded``; ``error`` for
    the last message of a stream the gateway cut off, ``gap`` for lost sequences);
    ``data``: the event's JSON (for ``error``, the reason as text); ``retry``: the
    reconnect delay in ms (the opening message only).
    """

    data: str = ""
    event: str = "message"
    id: str | None = None
    retry: int | None = None
