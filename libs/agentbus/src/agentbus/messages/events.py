"""Events on the events stream: task, agent, replica, node, approval and error events."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from agentbus.messages.common import (
    ErrorInfo,
    Message,
    TaskStatus,
)


class TaskEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.task.<status>.<task_id>``: a task's record changed status.

    One per record transition (``queued`` again after a retryable failure, with
    ``next_attempt_at``), so a task's history replays from the events stream with the
    filter ``<p>.events.task.*.<task_id>``.
    """

    task_id: str
    capability: str
    status: TaskStatus
    at: datetime
    attempt: int = 0
    agent_id: str | None = None
    error: ErrorInfo | None = None
    next_attempt_at: datetime | None = None
    reason: str = ""
    """Why the scheduler itself made the transition (sweeps, dead letters), else empty."""


class AgentEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.agent.<kind>``: an agent joined, left or was lost."""

    agent_id: str
    kind: Literal["joined", "left", "lost"]
    at: datetime
    name: str = ""
    node_id: str | None = None


class ReplicaEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.replica.<kind>``: a supervisor acted on a replica.

    ``reason`` is a token: for ``exited``, ``restarting`` and ``crash-loop`` the cause
    (``exit``, ``oom``, ``unhealthy``, ``heartbeat``); for ``started`` ``placed``,
    ``restarted`` or ``adopted``; for ``stopped`` ``unplaced``, ``replaced`` or
    ``supervisor-stopped``; for ``failed`` ``start-failed``, ``bad-spec`` or
    ``image-pull-failed``; ``pulling`` (at the start of an image pull and at most every
    few seconds during it) has the progress in ``detail``. ``detail``
    is one human-readable line (exit status, health check output, engine error).
    ``crash-loop``: the restart that exceeded ``CrashLoop.max_restarts`` within
    ``window_s``; restarts go on at the backoff cap.
    """

    node_id: str
    deployment: str
    replica: int
    kind: Literal["started", "exited", "restarting", "crash-loop", "stopped", "failed", "pulling"]
    at: datetime
    agent_id: str = ""
    exit_code: int | None = None
    restarts: int = 0
    reason: str = ""
    detail: str = ""


class ErrorEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.error.<service>``: a message could not be processed."""

    service: str
    subject: str
    reason: str
    at: datetime


class NodeEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.node.<kind>``: a node joined, left, was lost or fenced.

    The registry publishes ``joined``, ``left`` (its supervisor deleted its entry) and
    ``lost`` (the entry expired, TTL). The node's supervisor publishes ``fenced`` (cut
    off from the bus too long, it stopped every replica; published once it is back,
    ``at`` = when it fenced) and ``unfenced`` (back, reconciling again).
    """

    node_id: str
    kind: Literal["joined", "left", "lost", "fenced", "unfenced"]
    at: datetime
    reason: str = ""
    """Why, in words (``fenced``: how long the heartbeat had failed)."""


class DuplicateEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.<entity>.duplicate``: an error, two live instances of one id.

    The registry publishes one when heartbeats under one agent (or node) id alternate
    between different instances (``started_at``, ``hostname``, ``pid``, ``node_id``),
    i.e. one identity runs twice; it publishes no joins for the flapping. ``instances``
    describes each, e.g. ``host-a pid 4242 on node n1, started 2025-01-01T00:00:00Z``.
    """

    entity: Literal["agent", "node"]
    id: str
    at: datetime
    instances: list[str]


class ApprovalEvent(Message, frozen=True, kw_only=True):
    """Event on ``<p>.events.approval.<kind>.<approval_id>``: a human approval gate.

    The scheduler publishes ``requested`` when a handler's request is created and
    ``decided`` when it is decided (by a person, or by ``timeout``: the default).
    One approval's history replays with the filter ``<p>.events.approval.*.<id>``.
    """

    approval_id: str
    kind: Literal["requested", "decided"]
    task_id: str
    capability: str
    at: datetime
    summary: str = ""
    options: list[str] = []
    requested_by: str = ""
    """Agent id that asked."""
    option: str | None = None
    """``decided``: the option chosen."""
    decided_by: str | None = None
    """``decided``: ``token:<name>/<id>``, ``cli:<user>`` or ``timeout``."""
    comment: str = ""
    expires_at: datetime | None = None


MESSAGES: tuple[type[Message], ...] = (
    TaskEvent,
    ApprovalEvent,
    AgentEvent,
    ReplicaEvent,
    ErrorEvent,
    NodeEvent,
    DuplicateEvent,
)
