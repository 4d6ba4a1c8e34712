"""Tasks: submit commands, the task record, the work item and agent reports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import (
    NULL,
    TERMINAL_STATUSES,
    Backoff,
    BlobRef,
    ErrorInfo,
    Message,
    TaskId,
    TaskStatus,
    Token,
)


class SubmitTask(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.submit``): queue one task.

    ``task_id`` is the idempotency key: submitting the same id again returns the
    existing task unchanged. ``input`` is any JSON value; inputs over the inline limit
    travel as ``input_ref`` into the Object Store with ``input`` null.
    """

    capability: Token
    input: msgspec.Raw = NULL
    input_ref: BlobRef | None = None
    task_id: TaskId | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    parent_id: TaskId | None = None
    tenant: str | None = None
    metadata: dict[str, str] = {}
    deadline: datetime | None = None
    """Absolute time after which the task never starts (it ends ``expired``)."""
    backoff: Backoff | None = None
    """Delay between attempts; ``None`` takes ``Backoff()``'s defaults."""
    handoff_from: TaskId | None = None
    """Hand-off: the running task whose work this task takes over (see ``TaskRecord``)."""
    require_agent: bool = False
    """Refuse the task (409, ``ConflictError``) unless a live agent serves its
    capability now; a repeat of an existing ``task_id`` is not refused."""


class SubmitTasks(Message, frozen=True, kw_only=True):
    """Command to the scheduler (``<p>.scheduler.submit_batch``): queue many tasks."""

    tasks: list[SubmitTask]


class Attempt(Message, frozen=True, kw_only=True):
    """One delivery of a task to an agent, as recorded by the scheduler."""

    number: int
    agent_id: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Literal["running", "succeeded", "failed", "lost", "cancelled", "expired"] = "running"
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
    deadline: datetime | None = None
    backoff: Backoff | None = None
    children: list[str] = []
    """Ids of the subtasks submitted with this task as ``parent_id``, in order."""
    stream_seq: int | None = None
    """Sequence of the task's message in ``<P>_TASKS`` (to delete it on cancel/expiry)."""
    next_attempt_at: datetime | None = None
    """When a ``queued`` task that failed retryably becomes deliverable again."""
    resubmit_of: str | None = None
    """Id of the dead (or failed, expired) task this one was resubmitted from."""
    handoff_to: str | None = None
    """Id of the task this one handed its work off to (``TaskContext.handoff``)."""
    handoff_from: str | None = None
    """Id of the task that handed its work off to this one."""

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

    task_id: TaskId


class TaskReply(Message, frozen=True, kw_only=True):
    """Reply carrying one task record."""

    task: TaskRecord


class ListTasks(Message, frozen=True, kw_only=True):
    """Request to the scheduler (``<p>.scheduler.list``): one page of tasks by status.

    ``dead`` tasks (without ``parent_id``) come from the dead-letter index (KV
    ``<p>_dead_tasks``), newest first, ``total`` = all dead tasks matched. Any other
    status (None: every status) is a bounded read of the task records in the order
    they were last written, oldest first (at most ``SCHEDULER_LIST_MAX_RECORDS``
    records per request): a page may hold fewer than ``limit`` tasks while
    ``next_cursor`` is set, ``total`` counts the page, and a record written again
    while paging moves to a later page.
    """

    status: TaskStatus | None = "dead"
    capability: Token | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    parent_id: TaskId | None = None
    """Only subtasks of this task."""
    cursor: str | None = None
    """``next_cursor`` of the previous page (opaque); None: the first page."""
    tenant: str | None = None
    """Only tasks of this tenant (``dead`` ones then come from the task records)."""


class TasksReply(Message, frozen=True, kw_only=True):
    """Reply to ``ListTasks``: one page of matching records (see ``ListTasks``)."""

    tasks: list[TaskRecord]
    total: int
    next_cursor: str | None = None
    """Pass as ``ListTasks.cursor`` for the next page; None: this was the last."""


class ResubmitTask(Message, frozen=True, kw_only=True):
    """Request to the scheduler (``<p>.scheduler.resubmit``): run a dead task again.

    The old record stays as it is (a task reaches a terminal state exactly once); a new
    task with the same capability, input and options is admitted under
    ``new_task_id`` (default: the old id with ``-r<n>`` appended or incremented, so a
    repeated request is idempotent) with ``resubmit_of`` = the old id and a fresh
    attempt budget. ``dead``, ``failed`` and ``expired`` tasks can be resubmitted.
    """

    task_id: TaskId
    new_task_id: TaskId | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    """Attempt budget of the new task (default: the old task's)."""
    deadline: datetime | None = None
    """Deadline of the new task (default: none; the old one has usually passed)."""


class DeadTask(Message, frozen=True, kw_only=True):
    """Entry of the dead-letter index KV ``<p>_dead_tasks``, key ``<capability>.<task_id>``."""

    task_id: str
    capability: str
    dead_at: datetime
    attempts: int = 0
    error: ErrorInfo | None = None


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
    max_attempts: int = 3
    deadline: datetime | None = None
    backoff: Backoff | None = None
    tenant: str | None = None


class TaskStarted(Message, frozen=True, kw_only=True):
    """Agent report on ``<p>.results.<capability>.<agent_id>``: a handler started the task."""

    task_id: TaskId
    agent_id: str
    attempt: int
    started_at: datetime


class TaskResult(Message, frozen=True, kw_only=True):
    """Agent report on ``<p>.results.<capability>.<agent_id>``: the attempt finished.

    ``status`` ``succeeded`` carries ``output`` (or ``output_ref``); ``failed`` carries
    ``error``. The scheduler applies the first result per task id and drops the rest.
    """

    task_id: TaskId
    agent_id: str
    attempt: int
    status: Literal["succeeded", "failed", "cancelled", "expired", "dead"]
    started_at: datetime
    finished_at: datetime
    output: msgspec.Raw = NULL
    output_ref: BlobRef | None = None
    error: ErrorInfo | None = None
    retry_in_s: float | None = None
    """Set on a retryable failure the agent returned (nak) with this delay."""
    ran: bool = False
    """The handler ran in this attempt. An agent may skip ``TaskStarted`` for a short
    attempt: the scheduler then records the attempt (and its ``running`` event) from
    the result. False for an attempt ended before it started (deadline passed,
    attempts exhausted); ``succeeded`` and ``failed`` always count as having run."""


AgentReport = TaskStarted | TaskResult


MESSAGES: tuple[type[Message], ...] = (
    SubmitTask,
    SubmitTasks,
    Attempt,
    TaskRecord,
    SubmitReply,
    SubmitTasksReply,
    GetTask,
    TaskReply,
    Task,
    TaskStarted,
    TaskResult,
    ListTasks,
    TasksReply,
    ResubmitTask,
    DeadTask,
)
