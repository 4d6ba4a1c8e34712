"""``ctx.request_approval``: a handler waits for a person's decision.

The scheduler keeps the request in KV ``<p>_approvals`` (``agentbus_scheduler.tasks.
approvals``; ``docs/decisions/0009-approvals.md``). A handler's wait:

1. The approval id is derived from the task id and the call's index in the handler
   (``approval_id``), so a handler run again (the agent crashed or was restarted and
   the task came back, here or on another agent) asks for the same approval and gets
   the existing request, decided or not, instead of a new one.
2. It watches the request's key (an ordered consumer on ``$KV.<p>_approvals.<cap>.
   <id>``, last value first, then every change) before it asks, so no decision can
   fall between the answer and the watch: the watch wakes it, nothing polls.
3. It asks the scheduler (``approval_request.<agent_id>``), which creates the request
   only for the attempt that holds the task.
4. While it waits the task is **parked**: its concurrency slot is lent to the intake
   (another task may run in it) and taken back, before the handler goes on, as soon
   as one is free; the task's ``timeout_s`` clock stops (waiting for a person is not
   the handler's run time); the lease is still renewed (``in_progress()``, as for any
   long attempt), so the task stays with this agent. If the agent dies, the lease
   lapses and the task is delivered again: step 1 finds the request.
5. A safety re-check (the same idempotent request) runs when the request's time is
   up, and at the latest every ``RESYNC_S``: the scheduler decides an expired request
   by ``timeout`` when it is read, should its timer have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from agentbus.errors import ContractError
from agentbus.messages import (
    ApprovalDecision,
    ApprovalRecord,
    ApprovalReply,
    RequestApproval,
    TaskStarted,
    utcnow,
)
from agentbus.messages.approvals import approval_id

if TYPE_CHECKING:
    from agentbus.runtime.context import TaskContext

RESYNC_S = 300.0
"""Longest wait without a re-check of the request (a watch broken without notice)."""
EXPIRY_GRACE_S = 1.0
"""After a request's ``expires_at``, how long to wait for the scheduler's timeout."""
_decode = msgspec.json.Decoder(ApprovalRecord).decode


class Slots(Protocol):
    """The agent's concurrency slots, as a parked task uses them (``Intake``)."""

    def lend(self) -> None:
        """Give the caller's slot back while it waits."""

    async def take_back(self) -> None:
        """Wait for a slot and take it (also when cancelled: the caller owns one)."""


@dataclass(slots=True)
class Parking:
    """What a handler of one attempt gives up while it waits for a person.

    Attributes:
        slots: the agent's slots (None: nothing to lend, e.g. a context made by hand).
        scope: the attempt's ``timeout_s`` scope (None: no timeout).
    """

    slots: Slots | None = None
    scope: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def parked(self) -> AsyncIterator[None]:
        """Lend the slot and stop the timeout clock for the block; then take both back."""
        loop = asyncio.get_running_loop()
        remaining_s: float | None = None
        if self.scope is not None and (when := self.scope.when()) is not None:
            remaining_s = when - loop.time()
            self.scope.reschedule(None)
        slots = self.slots
        if slots is not None:
            slots.lend()
        try:
            yield
        finally:
            if slots is not None:
                await slots.take_back()
            if remaining_s is not None and self.scope is not None:
                self.scope.reschedule(loop.time() + remaining_s)


@contextlib.asynccontextmanager
async def _watch(ctx: TaskContext, key: str) -> AsyncIterator[asyncio.Queue[ApprovalRecord]]:
    """Every value of ``key`` in the approvals bucket (the current one first)."""
    bus = ctx.bus
    bucket = bus.names.approvals_bucket
    updates: asyncio.Queue[ApprovalRecord] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        if not msg.data:
            return  # a delete or purge marker
        try:
            updates.put_nowait(_decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("approval record does not decode", key=key, error=repr(exc))

    sub = await bus.js.subscribe(
        f"$KV.{bucket}.{key}",
        stream=f"KV_{bucket}",
        ordered_consumer=True,
        cb=on_msg,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    try:
        yield updates
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _wait_s(record: ApprovalRecord) -> float:
    if record.expires_at is None:
        return RESYNC_S
    left_s = (record.expires_at - utcnow()).total_seconds() + EXPIRY_GRACE_S
    return min(max(left_s, EXPIRY_GRACE_S), RESYNC_S)


async def request_approval(
    ctx: TaskContext,
    summary: str,
    *,
    options: Sequence[str],
    timeout_s: float | None,
    default: str | None,
    index: int,
    started_at: datetime,
    parking: Parking,
) -> ApprovalDecision:
    """See ``TaskContext.request_approval``."""
    options = list(options)
    if not options or len(set(options)) != len(options):
        raise ContractError(f"options must be distinct and not empty, not {options}")
    if timeout_s is not None and default is None:
        raise ContractError("request_approval with a timeout_s needs a default")
    if default is not None and default not in options:
        raise ContractError(f"default {default!r} is not one of {options}")
    task, bus = ctx.task, ctx.bus
    aid = approval_id(task.task_id, index)
    request = RequestApproval(
        approval_id=aid,
        index=index,
        capability=task.capability,
        started=TaskStarted(
            task_id=task.task_id,
            agent_id=ctx.agent_id,
            attempt=ctx.attempt,
            started_at=started_at,
        ),
        summary=summary,
        options=options,
        default=default,
        timeout_s=timeout_s,
    )
    subject = bus.names.owner_endpoint("scheduler", "approval_request", ctx.agent_id)
    key = bus.names.approval_key(task.capability, aid)
    async with _watch(ctx, key) as updates:
        reply = await bus.request(subject, request, ApprovalReply)
        record = reply.approval
        if record.decision is not None:
            return record.decision
        logger.info("waiting for approval", approval_id=aid, created=reply.created)
        async with parking.parked():
            while record.decision is None:
                try:
                    record = await asyncio.wait_for(updates.get(), _wait_s(record))
                except TimeoutError:  # the scheduler expires it when read
                    record = (await bus.request(subject, request, ApprovalReply)).approval
        logger.info(
            "approval decided",
            approval_id=aid,
            option=record.decision.option,
            decided_by=record.decision.decided_by,
        )
        return record.decision
