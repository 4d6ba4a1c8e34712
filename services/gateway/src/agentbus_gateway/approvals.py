"""HTTP routes of human approval gates: list, read and decide approval requests.

``GET /v1/approvals?status=&task_id=&limit=`` and ``GET /v1/approvals/{approval_id}``
need ``tasks:read``; ``POST /v1/approvals/{approval_id}/decision`` needs
``approvals:decide`` (403 without). A decision is recorded as made by
``token:<name>/<token id>`` (``gateway:anonymous`` on a gateway without tokens) and
goes to the scheduler's ``approval_decide`` endpoint, which accepts only
``pending → decided`` (409 otherwise).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter

from agentbus.client.approvals import decide_approval, get_approval, list_approvals
from agentbus.messages import ApprovalRecord
from agentbus.messages.approvals import APPROVAL_ID_PATTERN, OptionName
from agentbus.messages.common import TASK_ID_PATTERN
from agentbus_gateway.auth import needs
from agentbus_gateway.routes import BODY_REFUSALS, Ctx, error_responses

ApprovalIdPath = Annotated[
    str, PathParameter(pattern=APPROVAL_ID_PATTERN, description="Approval id: 32 hex")
]


class DecisionView(msgspec.Struct, kw_only=True):
    """Who chose which option, when, and why."""

    option: str
    decided_by: str
    """``token:<name>/<id>``, ``cli:<user>``, or ``timeout`` (the default was taken)."""
    decided_at: datetime
    comment: str = ""


class ApprovalView(msgspec.Struct, kw_only=True):
    """An approval request a handler made (``ctx.request_approval``) and its decision."""

    approval_id: str
    task_id: str
    capability: str
    summary: str
    options: list[str]
    default: str | None
    status: Literal["pending", "decided"]
    requested_by: str
    requested_at: datetime
    expires_at: datetime | None
    decision: DecisionView | None


class ApprovalList(msgspec.Struct, kw_only=True):
    """``GET /v1/approvals``: newest request first."""

    approvals: list[ApprovalView]


class DecisionBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/approvals/{approval_id}/decision``."""

    option: OptionName
    """One of the request's ``options``."""
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""


def approval_view(record: ApprovalRecord) -> ApprovalView:
    """The HTTP shape of ``record``."""
    d = record.decision
    return ApprovalView(
        approval_id=record.approval_id,
        task_id=record.task_id,
        capability=record.capability,
        summary=record.summary,
        options=record.options,
        default=record.default,
        status=record.status,
        requested_by=record.requested_by,
        requested_at=record.requested_at,
        expires_at=record.expires_at,
        decision=None
        if d is None
        else DecisionView(
            option=d.option, decided_by=d.decided_by, decided_at=d.decided_at, comment=d.comment
        ),
    )


@get(
    "/v1/approvals",
    summary="List approval requests",
    description="Approval requests by status (default pending), newest first.",
    responses=error_responses(503, 504),
    tags=["approvals"],
    **needs("tasks:read"),
)
async def list_approvals_route(
    ctx: Ctx,
    status: Annotated[
        Literal["pending", "decided", "all"], QueryParameter(description="Which requests")
    ] = "pending",
    task_id: Annotated[
        str | None, QueryParameter(pattern=TASK_ID_PATTERN, description="Only this task's")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Most requests")] = 100,
) -> ApprovalList:
    """Approval requests with ``status``."""
    found = await list_approvals(ctx.bus, status=status, task_id=task_id, limit=limit)
    return ApprovalList(approvals=[approval_view(a) for a in found])


@get(
    "/v1/approvals/{approval_id:str}",
    summary="Get an approval request",
    description="One approval request and its decision, if made.",
    responses=error_responses(404, 503, 504),
    tags=["approvals"],
    **needs("tasks:read"),
)
async def get_approval_route(approval_id: ApprovalIdPath, ctx: Ctx) -> ApprovalView:
    """One approval request."""
    return approval_view(await get_approval(ctx.bus, approval_id))


@post(
    "/v1/approvals/{approval_id:str}/decision",
    status_code=200,
    summary="Decide an approval request",
    description=(
        "Choose one of the request's options; the waiting handler resumes with it. "
        "400 an option the request does not offer; 409 already decided (or its time "
        "was up and it took its default). Needs scope approvals:decide."
    ),
    responses=error_responses(400, 404, 409, *BODY_REFUSALS, 503, 504),
    tags=["approvals"],
    **needs("approvals:decide"),
)
async def decide_approval_route(
    approval_id: ApprovalIdPath,
    data: JSONBody[DecisionBody],
    ctx: Ctx,
    request: Request[Any, Any, Any],
) -> ApprovalView:
    """Decide ``approval_id`` as the caller's token."""
    token_id = getattr(request.state, "token_id", None)
    token_name = getattr(request.state, "token_name", None)
    who = f"token:{token_name}/{token_id}" if token_id else "gateway:anonymous"
    decided = await decide_approval(
        ctx.bus, approval_id, data.option, decided_by=who, comment=data.comment
    )
    return approval_view(decided)


APPROVAL_ROUTES = [list_approvals_route, get_approval_route, decide_approval_route]
