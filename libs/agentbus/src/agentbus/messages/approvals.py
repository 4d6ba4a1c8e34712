"""Human approval gates: a handler's request, its decision, and the scheduler requests.

A handler calls ``ctx.request_approval`` (``agentbus.runtime.approvals``); the scheduler
stores an ``ApprovalRecord`` in KV ``<p>_approvals`` (key ``<capability>.<approval_id>``)
and is its only writer. ``docs/decisions/0009-approvals.md`` has the design.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import Message, TaskId, Token
from agentbus.messages.tasks import TaskStarted

APPROVAL_ID_PATTERN = r"^[0-9a-f]{32}$"
ApprovalId = Annotated[str, msgspec.Meta(pattern=APPROVAL_ID_PATTERN)]
"""An approval id: 32 lowercase hex characters (a uuid5 of the task id and call index)."""
OptionName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
"""One choice offered to the decider (``approve``, ``deny``, ...)."""
ApprovalStatus = Literal["pending", "decided"]
_IDS = uuid.UUID("0d6c3b1e-53c8-4f4e-9a55-3f2e7a9b1c40")
"""Namespace of approval ids (uuid5)."""
TIMEOUT_DECIDER = "timeout"
"""``decided_by`` of a decision the scheduler took because nobody decided in time."""


def approval_id(task_id: str, index: int) -> str:
    """The id of call ``index`` (0, 1, ...) of ``request_approval`` in task ``task_id``.

    Deterministic: a handler run again for the same task finds its earlier requests.
    """
    return uuid.uuid5(_IDS, f"{task_id}/approval/{index}").hex


class ApprovalDecision(Message, frozen=True, kw_only=True):
    """Who chose which option, when, and why."""

    option: str
    decided_by: str
    """``token:<name>/<token id>`` (HTTP), ``cli:<user>`` (the CLI), or ``timeout``."""
    decided_at: datetime
    comment: str = ""

    @property
    def timed_out(self) -> bool:
        """Whether the default was taken because nobody decided in time."""
        return self.decided_by == TIMEOUT_DECIDER


class ApprovalRecord(Message, frozen=True, kw_only=True):
    """An approval request and, once made, its decision (KV ``<p>_approvals``)."""

    approval_id: ApprovalId
    task_id: TaskId
    capability: Token
    index: int
    """Which ``request_approval`` call of the handler this is (0, 1, ...)."""
    summary: str
    options: list[str]
    default: str | None = None
    """The option a timeout takes; None: a timeout takes nothing (no ``timeout_s``)."""
    status: ApprovalStatus = "pending"
    requested_by: str
    """Agent id that made the request."""
    requested_at: datetime
    expires_at: datetime | None = None
    """When the default is taken; None: the request waits until decided."""
    tenant: str | None = None
    decision: ApprovalDecision | None = None


class RequestApproval(Message, frozen=True, kw_only=True):
    """``<p>.scheduler.approval_request.<agent_id>``: create (or find) a request.

    ``started`` is the requesting attempt's ``TaskStarted``: the scheduler applies it
    to the task record (as the results consumer would) and creates the request only if
    that attempt, by this agent, is the task's latest and running.
    """

    approval_id: ApprovalId
    index: Annotated[int, msgspec.Meta(ge=0)]
    capability: Token
    started: TaskStarted
    summary: Annotated[str, msgspec.Meta(max_length=4000)]
    options: Annotated[list[OptionName], msgspec.Meta(min_length=1, max_length=16)]
    default: str | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None

    @property
    def agent_id(self) -> str:
        """The requesting agent (the subject's owner token)."""
        return self.started.agent_id


class DecideApproval(Message, frozen=True, kw_only=True):
    """``<p>.scheduler.approval_decide``: decide a pending request (gateway, operators)."""

    approval_id: ApprovalId
    option: OptionName
    decided_by: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""


class GetApproval(Message, frozen=True, kw_only=True):
    """``<p>.scheduler.approval_get``: one approval by id."""

    approval_id: ApprovalId


class ListApprovals(Message, frozen=True, kw_only=True):
    """``<p>.scheduler.approval_list``: approvals by status, newest request first."""

    status: Literal["pending", "decided", "all"] = "pending"
    task_id: TaskId | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class ApprovalReply(Message, frozen=True, kw_only=True):
    """Reply of ``approval_request``, ``approval_decide`` and ``approval_get``."""

    approval: ApprovalRecord
    created: bool = False
    """``approval_request``: whether this call created the request."""


class ApprovalsReply(Message, frozen=True, kw_only=True):
    """Reply of ``approval_list``."""

    approvals: list[ApprovalRecord]


MESSAGES: tuple[type[Message], ...] = (
    ApprovalDecision,
    ApprovalRecord,
    RequestApproval,
    DecideApproval,
    GetApproval,
    ListApprovals,
    ApprovalReply,
    ApprovalsReply,
)
