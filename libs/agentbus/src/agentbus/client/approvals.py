"""The caller's side of approval gates: list, read and decide approval requests.

Requests to the scheduler's ``approval_list``, ``approval_get`` and
``approval_decide`` endpoints (``docs/protocol.md``, "Approvals"); the CLI
(``agentbus approvals``) and the gateway (``/v1/approvals``) use these.
"""

from __future__ import annotations

from typing import Literal

from agentbus.bus import Bus
from agentbus.messages import (
    ApprovalRecord,
    ApprovalReply,
    ApprovalsReply,
    DecideApproval,
    GetApproval,
    ListApprovals,
)


async def list_approvals(
    bus: Bus,
    *,
    status: Literal["pending", "decided", "all"] = "pending",
    task_id: str | None = None,
    limit: int = 100,
) -> list[ApprovalRecord]:
    """Approvals with ``status`` (of ``task_id`` if given), newest request first.

    Raises:
        ContractError: a bad argument (e.g. ``limit`` outside 1..1000).
        UnavailableError: no scheduler answers, or it has not loaded the approvals.
    """
    request = ListApprovals(status=status, task_id=task_id, limit=limit)
    subject = bus.names.endpoint("scheduler", "approval_list")
    return (await bus.request(subject, request, ApprovalsReply)).approvals


async def get_approval(bus: Bus, approval_id: str) -> ApprovalRecord:
    """One approval request and its decision, if made.

    Raises:
        NotFoundError: no such approval.
        ContractError: ``approval_id`` is not an approval id (32 hex characters).
    """
    subject = bus.names.endpoint("scheduler", "approval_get")
    return (
        await bus.request(subject, GetApproval(approval_id=approval_id), ApprovalReply)
    ).approval


async def decide_approval(
    bus: Bus, approval_id: str, option: str, *, decided_by: str, comment: str = ""
) -> ApprovalRecord:
    """Decide a pending approval: ``option`` by ``decided_by``; the decided record.

    Raises:
        NotFoundError: no such approval.
        ConflictError: it was decided already (or its time was up: it took the default).
        ContractError: ``option`` is not one the request offers.
    """
    request = DecideApproval(
        approval_id=approval_id, option=option, decided_by=decided_by, comment=comment
    )
    subject = bus.names.endpoint("scheduler", "approval_decide")
    return (await bus.request(subject, request, ApprovalReply)).approval
