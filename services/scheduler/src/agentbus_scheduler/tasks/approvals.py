"""Human approval gates: the scheduler stores, decides and times out approval requests.

Endpoints (``docs/decisions/0009-approvals.md``):

- ``approval_request.<agent_id>`` (``RequestApproval`` → ``ApprovalReply``): an agent
  asks. The request carries the attempt's ``TaskStarted``, applied to the task record
  as the results consumer would; the request is created only if that attempt, by that
  agent, is the record's latest and running ("holds the task"), else 403. The id
  must be ``approval_id(task_id, index)``: a handler run again (after a crash, on
  another agent) finds the request, and its decision, instead of making a new one.
- ``approval_decide`` (``DecideApproval``): a compare-and-set ``pending → decided``
  (409 if already decided or expired, 400 for an option not offered). Agents may not
  publish on it (``agentbus.auth.permissions``); the gateway and operators may.
- ``approval_get`` / ``approval_list``: one, or a page, from the mirror.

Each instance mirrors ``<p>_approvals`` (``KvMirror``) and keeps a timer per pending
request with an ``expires_at``; at that time it decides the request with its
``default`` as ``timeout`` (the same compare-and-set: with several instances, one
wins). A request, decision or read of an expired pending request expires it first,
so a scheduler that was down when the time came catches up.

Every creation and decision is an ``ApprovalEvent`` on
``<p>.events.approval.<requested|decided>.<approval_id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.errors import (
    ConflictError,
    ContractError,
    ForbiddenError,
    NotFoundError,
    UnavailableError,
)
from agentbus.kv.mirror import KvChange, KvMirror
from agentbus.messages import (
    ApprovalDecision,
    ApprovalEvent,
    ApprovalRecord,
    ApprovalReply,
    ApprovalsReply,
    DecideApproval,
    GetApproval,
    ListApprovals,
    RequestApproval,
    TaskRecord,
    encode,
    utcnow,
)
from agentbus.messages.approvals import TIMEOUT_DECIDER, approval_id
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.lifecycle import Changes, apply_report

_decode = msgspec.json.Decoder(ApprovalRecord).decode
MIRROR_WAIT_S = 5.0
"""How long a list waits for the mirror's first replay before answering 503."""


def holds(record: TaskRecord, request: RequestApproval) -> bool:
    """Whether ``request``'s attempt is ``record``'s latest attempt, running, by its agent."""
    if record.status != "running" or not record.attempts:
        return False
    latest = max(record.attempts, key=lambda a: a.number)
    started = request.started
    return (
        latest.status == "running"
        and latest.agent_id == started.agent_id
        and latest.started_at == started.started_at
    )


class Approvals:
    """The approval endpoints and timers of one scheduler instance."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        names = ctx.bus.names
        self.bucket = names.approvals_bucket
        self.mirror = KvMirror(
            ctx.bus,
            self.bucket,
            ApprovalRecord,
            service_metrics=ctx.service_metrics,
            on_entry=self._on_entry,
        )
        self._keys: dict[str, str] = {}  # approval id -> key
        self._timers: dict[str, asyncio.TimerHandle] = {}  # key -> expiry timer
        self._expiring: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror the bucket (and keep the expiry timers) until ``stop`` is set."""
        await self.mirror.run(stop)

    async def close(self) -> None:
        """Cancel the timers; wait for expiries in progress."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await asyncio.gather(*self._expiring, return_exceptions=True)

    # -- the mirror and the timers --------------------------------------------------------
    async def _on_entry(self, change: KvChange[ApprovalRecord]) -> None:
        self._track(change.key, change.new)

    def _track(self, key: str, record: ApprovalRecord | None) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        if record is None:
            self._keys.pop(key.rsplit(".", 1)[-1], None)
            return
        self._keys[record.approval_id] = key
        if record.status != "pending" or record.expires_at is None:
            return
        delay_s = max((record.expires_at - utcnow()).total_seconds(), 0.0)
        self._timers[key] = asyncio.get_running_loop().call_later(delay_s, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        task = asyncio.create_task(self._expire_quietly(key))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire_quietly(self, key: str) -> None:
        try:
            await self._decide(key, None)
        except ConflictError:
            pass  # decided meanwhile
        except Exception as exc:  # the next read of the request expires it
            logger.warning("approval not expired", key=key, error=repr(exc))

    # -- reads and writes -------------------------------------------------------------------
    async def _read(self, key: str) -> tuple[ApprovalRecord, int] | None:
        kv = await self.ctx.bus.kv(self.bucket)
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return _decode(entry.value), entry.revision

    async def _find(self, approval_id: str) -> str:
        """The key of ``approval_id``: from the mirror, else a filtered read of the bucket.

        Raises:
            NotFoundError: no such approval.
        """
        if (key := self._keys.get(approval_id)) is not None:
            return key
        kv = await self.ctx.bus.kv(self.bucket)
        watcher = await kv.watch(f"*.{approval_id}", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                return str(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        raise NotFoundError(f"approval {approval_id!r} not found")

    async def _decide(self, key: str, request: DecideApproval | None) -> ApprovalRecord:
        """Decide ``key`` as ``request`` says (None: take the default, as ``timeout``).

        An expired pending request is decided by ``timeout`` first, then refused.

        Raises:
            NotFoundError: no such approval.
            ConflictError: already decided (or it expired before this decision).
            ContractError: the option is not one the request offers.
        """
        kv = await self.ctx.bus.kv(self.bucket)
        for _ in range(10):
            found = await self._read(key)
            if found is None:
                raise NotFoundError(f"approval {key.rsplit('.', 1)[-1]!r} not found")
            record, revision = found
            if record.status != "pending" or record.decision is not None:
                d = record.decision
                by = f"{d.option!r} by {d.decided_by}" if d is not None else "already"
                raise ConflictError(f"approval {record.approval_id!r} was decided: {by}")
            now = utcnow()
            expired = record.expires_at is not None and now >= record.expires_at
            if request is None or expired:
                if not expired:
                    raise ConflictError(f"approval {record.approval_id!r} has not expired")
                decision = ApprovalDecision(
                    option=record.default or record.options[-1],
                    decided_by=TIMEOUT_DECIDER,
                    decided_at=now,
                )
            else:
                if request.option not in record.options:
                    raise ContractError(f"option {request.option!r} is not one of {record.options}")
                decision = ApprovalDecision(
                    option=request.option,
                    decided_by=request.decided_by,
                    decided_at=now,
                    comment=request.comment,
                )
            decided = msgspec.structs.replace(record, status="decided", decision=decision)
            try:
                written = await kv.update(key, encode(decided), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            self.mirror.apply(key, written, decided)
            self._track(key, decided)
            await self._event(decided)
            logger.info(
                "approval decided",
                approval_id=record.approval_id,
                task_id=record.task_id,
                option=decision.option,
                decided_by=decision.decided_by,
            )
            if request is not None and expired:
                raise ConflictError(f"approval {record.approval_id!r} expired; took the default")
            return decided
        raise UnavailableError(f"approval {key!r}: 10 write conflicts in a row")

    async def _current(self, key: str, record: ApprovalRecord) -> ApprovalRecord:
        """``record``, decided by ``timeout`` first if it is pending past its time."""
        if record.status == "pending" and record.expires_at is not None:
            if utcnow() >= record.expires_at:
                with contextlib.suppress(ConflictError):
                    return await self._decide(key, None)
                found = await self._read(key)
                return found[0] if found is not None else record
        return record

    async def _event(self, record: ApprovalRecord) -> None:
        """Publish the ``ApprovalEvent`` of ``record``'s state (best effort, logged)."""
        d = record.decision
        event = ApprovalEvent(
            approval_id=record.approval_id,
            kind="decided" if d is not None else "requested",
            task_id=record.task_id,
            capability=record.capability,
            at=d.decided_at if d is not None else record.requested_at,
            summary=record.summary,
            options=record.options,
            requested_by=record.requested_by,
            option=d.option if d is not None else None,
            decided_by=d.decided_by if d is not None else None,
            comment=d.comment if d is not None else "",
            expires_at=record.expires_at,
        )
        bus = self.ctx.bus
        subject = bus.names.approval_event_subject(event.kind, record.approval_id)
        try:
            await bus.js.publish(subject, encode(event))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not publish approval event", subject=subject, error=repr(exc))

    # -- endpoints --------------------------------------------------------------------------
    async def request(self, request: RequestApproval) -> ApprovalReply:
        """Create the approval ``request`` names, or return the one already made.

        Raises:
            ContractError: a wrong id, or a ``timeout_s`` without a ``default`` among
                the options.
            NotFoundError: no such task.
            ForbiddenError: the requesting attempt does not hold the task (400 for a
                capability that is not the task's).
            ConflictError: the task has ended.
        """
        started = request.started
        task_id = started.task_id
        if request.approval_id != approval_id(task_id, request.index):
            raise ContractError(f"approval id {request.approval_id!r} is not task {task_id!r}'s")
        if request.default is not None and request.default not in request.options:
            raise ContractError(f"default {request.default!r} is not one of {request.options}")
        if request.timeout_s is not None and request.default is None:
            raise ContractError("a request with a timeout_s needs a default")

        def transition(record: TaskRecord) -> Changes:
            if record.capability != request.capability:
                return None, None
            return apply_report(record, started, now=utcnow())

        outcome = await self.ctx.records.update(task_id, transition)
        record = outcome.record
        if record is None:
            raise NotFoundError(f"task {task_id!r} not found")
        if record.capability != request.capability:
            raise ForbiddenError(f"task {task_id!r} is not of capability {request.capability!r}")
        if record.terminal:
            raise ConflictError(f"task {task_id!r} has ended ({record.status})")
        if not holds(record, request):
            raise ForbiddenError(
                f"agent {started.agent_id!r} does not hold task {task_id!r} "
                f"(latest attempt by {record.agent_id!r})"
            )
        key = self.ctx.bus.names.approval_key(request.capability, request.approval_id)
        if (found := await self._read(key)) is not None:
            return ApprovalReply(approval=await self._current(key, found[0]))
        now = utcnow()
        expires = None if request.timeout_s is None else now + timedelta(seconds=request.timeout_s)
        created = ApprovalRecord(
            approval_id=request.approval_id,
            task_id=task_id,
            capability=request.capability,
            index=request.index,
            summary=request.summary,
            options=request.options,
            default=request.default,
            requested_by=started.agent_id,
            requested_at=now,
            expires_at=expires,
            tenant=record.tenant,
        )
        kv = await self.ctx.bus.kv(self.bucket)
        try:
            revision = await kv.create(key, encode(created))
        except nats.js.errors.KeyWrongLastSequenceError:  # made meanwhile (a retry)
            if (found := await self._read(key)) is None:
                raise
            return ApprovalReply(approval=found[0])
        self.mirror.apply(key, revision, created)
        self._track(key, created)
        await self._event(created)
        logger.info("approval requested", approval_id=created.approval_id, task_id=task_id)
        return ApprovalReply(approval=created, created=True)

    async def decide(self, request: DecideApproval) -> ApprovalReply:
        """Decide a pending approval (see ``_decide``)."""
        key = await self._find(request.approval_id)
        return ApprovalReply(approval=await self._decide(key, request))

    async def get(self, request: GetApproval) -> ApprovalReply:
        """One approval.

        Raises:
            NotFoundError: no such approval.
        """
        key = await self._find(request.approval_id)
        found = await self._read(key)
        if found is None:
            raise NotFoundError(f"approval {request.approval_id!r} not found")
        return ApprovalReply(approval=await self._current(key, found[0]))

    async def list(self, request: ListApprovals) -> ApprovalsReply:
        """Approvals with ``request.status`` (and task), newest request first.

        Raises:
            UnavailableError: the mirror has not replayed the bucket yet.
        """
        try:
            await asyncio.wait_for(self.mirror.ready.wait(), MIRROR_WAIT_S)
        except TimeoutError:
            raise UnavailableError("approvals are not loaded yet; retry") from None
        wanted = [
            a
            for a in self.mirror.values.values()
            if (request.status == "all" or a.status == request.status)
            and (request.task_id is None or a.task_id == request.task_id)
        ]
        wanted.sort(key=lambda a: a.requested_at, reverse=True)
        return ApprovalsReply(approvals=wanted[: request.limit])
