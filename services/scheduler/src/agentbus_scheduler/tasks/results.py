"""Apply agent reports (``TaskStarted``, ``TaskResult``) to the task records.

The scheduler is the single writer of KV ``<p>_tasks``. Reports come from the
WorkQueue stream ``<P>_RESULTS`` through the durable pull consumer
``scheduler-results``; each is acked after its record write, so a crash before the
write redelivers it. The first result per task wins; later results are counted as
duplicates and dropped. Writes are compare-and-set (``records.Records``), the
transitions pure functions (``lifecycle.apply_report``). A task that ends ``dead`` is
added to the dead-letter index (``deadletters.DeadLetters``).

A report that does not decode is terminated and reported (``ErrorEvent``, metric); a
report whose task record is corrupt is terminated the same way, never retried. A
report that is not attributable to its agent (``attribution``: subject, agent id,
capability, attempt) is refused: acked, reported and counted, never applied.

**One pass per fetched batch.** The reports of a batch whose records are in the
record cache (``records.RecordCache``: every task this instance admitted) are folded
per task (a ``TaskStarted`` and a ``TaskResult`` fetched together make one write),
their compare-and-set writes all sent at once and awaited together, then their events
and acks all sent at once: a few socket writes per batch instead of a few per report
(the scheduler's largest cost in ``just bench tasks`` was one socket write per
event-loop iteration that published). The rest (not cached, a write conflict, a
record ending ``dead``, a task whose earlier report is still being applied) take the
general path: one apply task per report, in per-task order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from agentbus.bus.publisher import EXPECTED_LAST_SUBJECT_SEQ
from agentbus.bus.pulls import NoWaitPuller, nak_quietly
from agentbus.messages import TaskEvent, TaskRecord, TaskResult, decode_report, encode, utcnow
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.attribution import (
    Refusal,
    check_record,
    check_reporter,
    refuse,
)
from agentbus_scheduler.tasks.deadletters import DeadLetters
from agentbus_scheduler.tasks.lifecycle import Changes, Report, apply_report
from agentbus_scheduler.tasks.records import publish_task_event


@dataclass(slots=True)
class _Fold:
    """The reports of one task applied in order to its cached record."""

    group: list[tuple[Msg, Report]]
    record: TaskRecord
    revision: int
    changed: bool
    events: list[TaskEvent]
    statuses: list[str | None]
    """Per report: the record status it led to, None if it changed nothing."""
    refusals: list[Refusal | None]
    """Per report: why it is refused (``attribution.check_record``), None if not."""


def _capability(subject: str) -> str:
    """The capability token of a report's subject (checked by ``check_reporter``)."""
    return subject.split(".")[2]


def _fold(
    cached: tuple[TaskRecord, int] | None, group: list[tuple[Msg, Report]], *, now: datetime
) -> _Fold | None:
    """``group`` applied to the cached record (None: not cached)."""
    if cached is None:
        return None
    record, revision = cached
    fold = _Fold(group, record, revision, changed=False, events=[], statuses=[], refusals=[])
    for msg, report in group:
        refusal = check_record(fold.record, report, _capability(msg.subject))
        fold.refusals.append(refusal)
        if refusal is not None:
            fold.statuses.append(None)
            continue
        updated, events = apply_report(fold.record, report, now=now)
        if updated is None:
            fold.statuses.append(None)
            continue
        fold.record, fold.changed = updated, True
        fold.statuses.append(updated.status)
        if isinstance(events, tuple):
            fold.events.extend(events)
        elif events is not None:
            fold.events.append(events)
    return fold


class ResultsConsumer:
    """Pulls agent reports and applies them to task records until stopped."""

    def __init__(self, ctx: SchedulerContext, *, dead_letters: DeadLetters) -> None:
        self.ctx = ctx
        self.dead_letters = dead_letters
        self._puller: NoWaitPuller | None = None
        self._applied_by_status: dict[str, Counter] = {}

    async def setup(self) -> None:
        """Create (or update) the durable consumer and bind to it; idempotent."""
        names = self.ctx.bus.names
        await self.ctx.bus.js.add_consumer(
            names.results_stream,
            ConsumerConfig(
                name=names.RESULTS_CONSUMER,
                durable_name=names.RESULTS_CONSUMER,
                filter_subject=names.results_all(),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ctx.settings.results_ack_wait_s,
                max_ack_pending=max(1000, 4 * self.ctx.settings.results_batch),
            ),
        )
        # pulls answered into one callback subscription: nats-py's fetch() waits for
        # each message with a task and a timer of its own
        self._puller = NoWaitPuller(
            self.ctx.bus,
            names.results_stream,
            timeout_s=self.ctx.bus.settings.request_timeout_s,
            late=self._late,
        )
        await self._puller.start()

    async def close(self) -> None:
        """Unsubscribe from the pull replies (the durable stays for the next start)."""
        if self._puller is not None:
            puller, self._puller = self._puller, None
            await puller.stop()

    async def _late(self, msg: Msg) -> None:
        """A report that came after its pull was given up on: have it delivered again."""
        await nak_quietly(msg)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and apply reports until ``stop`` is set.

        Fetching does not wait for the reports fetched before to be applied (a batch
        used to wait for its slowest record write): the cached reports of a batch are
        applied in one task (``_apply_cached``), the others each in a task of its own,
        always after the reports of the same task fetched before (per-task order),
        with at most ``2 * results_batch`` reports being applied at once. Reports
        fetched and not yet settled are renewed (``in_progress``) every third of
        ``results_ack_wait_s`` by ``_keep``, so a slow instance is not sent them again
        while a dead one's come back after the AckWait. On stop, applies in flight get
        ``results_fetch_timeout_s`` to finish; any cut short is redelivered after the
        consumer's AckWait.
        """
        if self._puller is None:
            await self.setup()
        puller = self._puller
        assert puller is not None
        consumer = self.ctx.bus.names.RESULTS_CONSUMER
        size, wait_s = self.ctx.settings.results_batch, self.ctx.settings.results_fetch_timeout_s
        window = asyncio.Semaphore(2 * self.ctx.settings.results_batch)
        last: dict[str, asyncio.Task[None]] = {}  # task id -> its latest apply
        unsettled: dict[int, tuple[Msg, float]] = {}  # id(msg) -> (msg, fetched at)
        keeper = asyncio.create_task(self._keep(unsettled, stop), name="results renewals")

        def applied(
            task_id: str, msgs: list[Msg], done: asyncio.Task[None], *, permits: int = 1
        ) -> None:
            for _ in range(permits):
                window.release()
            for msg in msgs:
                unsettled.pop(id(msg), None)
            if last.get(task_id) is done:
                del last[task_id]

        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                try:
                    msgs = (await puller.pull(consumer, size, wait_s=wait_s)).msgs
                except Exception as exc:
                    logger.warning("results fetch failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                groups: dict[str, list[tuple[Msg, Report]]] = {}
                decoded = await self._decode_all(msgs)
                fetched_at = loop.time()
                unsettled.update((id(msg), (msg, fetched_at)) for msg, _ in decoded)
                for msg, report in decoded:
                    await window.acquire()
                    groups.setdefault(report.task_id, []).append((msg, report))
                cached = [
                    (task_id, group)
                    for task_id, group in groups.items()
                    if task_id not in last and task_id in self.ctx.records.cache
                ]
                if cached:
                    batch = asyncio.create_task(self._apply_cached(cached))
                    for task_id, group in cached:
                        del groups[task_id]
                        last[task_id] = batch
                        batch.add_done_callback(
                            functools.partial(
                                applied, task_id, [m for m, _ in group], permits=len(group)
                            )
                        )
                for task_id, group in groups.items():
                    for msg, report in group:
                        before = last.get(task_id)
                        apply = asyncio.create_task(self._handle_after(before, msg, report))
                        last[task_id] = apply
                        apply.add_done_callback(functools.partial(applied, task_id, [msg]))
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if last:
                pending = set(last.values())
                _, late = await asyncio.wait(
                    pending, timeout=self.ctx.settings.results_fetch_timeout_s
                )
                for apply in late:
                    apply.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _keep(self, unsettled: dict[int, tuple[Msg, float]], stop: asyncio.Event) -> None:
        """Renew the lease of every report fetched a third of the AckWait ago or more.

        Runs every third of ``results_ack_wait_s`` until ``stop``; a renewal that
        fails is left to the AckWait (the report is then applied again, a duplicate
        that changes nothing).
        """
        every_s = self.ctx.settings.results_ack_wait_s / 3
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            due = loop.time() - every_s
            for msg, fetched_at in list(unsettled.values()):
                if fetched_at <= due:
                    try:
                        await msg.in_progress()
                    except nats.errors.Error as exc:
                        logger.debug("report renewal failed", error=repr(exc))

    async def _apply_cached(self, groups: list[tuple[str, list[tuple[Msg, Report]]]]) -> None:
        """Apply the reports of tasks whose record is cached: one write per task, together.

        Each task's reports are folded into one transition of the cached record; the
        writes go out together and are awaited together; then the events and acks.
        A task whose write was refused (a stale cache entry), whose record ends
        ``dead`` (indexed before its write) or whose write failed otherwise goes the
        general way (``_handle_one`` per report), which re-reads the record.
        """
        publisher = await self.ctx.bus.publisher()
        bucket = self.ctx.bus.names.tasks_bucket
        now = utcnow()
        writes: list[tuple[_Fold, asyncio.Future[int]]] = []
        general: list[tuple[Msg, Report]] = []
        for task_id, group in groups:
            fold = _fold(self.ctx.records.cache.get(task_id), group, now=now)
            if fold is None or fold.record.status == "dead":
                general.extend(group)
            elif not fold.changed:
                await self._settle(fold, changed=False)
            else:
                headers = {EXPECTED_LAST_SUBJECT_SEQ: str(fold.revision)}
                try:
                    written = await publisher.publish(
                        f"$KV.{bucket}.{task_id}", encode(fold.record), headers
                    )
                except nats.errors.Error:  # not sent: the general way retries or naks
                    general.extend(group)
                    continue
                writes.append((fold, written))
        if writes:
            await asyncio.wait([written for _, written in writes])
        for fold, written in writes:
            if written.cancelled() or written.exception() is not None:
                self.ctx.records.cache.drop(fold.record.task_id)
                if isinstance(written.exception(), nats.js.errors.KeyWrongLastSequenceError):
                    self.ctx.metrics.record_conflicts.inc()
                general.extend(fold.group)
                continue
            self.ctx.records.cache.put(fold.record, written.result())
            for event in fold.events:
                await publish_task_event(self.ctx.bus, event)
            await self._settle(fold, changed=True)
        for msg, report in general:
            await self._handle_one(msg, report)

    async def _settle(self, fold: _Fold, *, changed: bool) -> None:
        """Count the folded reports' outcomes and ack their messages."""
        outcomes = zip(fold.group, fold.statuses, fold.refusals, strict=True)
        for (msg, report), status, refusal in outcomes:
            if refusal is not None:
                await refuse(self.ctx, msg, report, refusal)
                continue
            if status is not None and changed:
                self._applied(status).inc()
            elif isinstance(report, TaskResult):
                self._duplicate(report)
            await msg.ack()

    def _applied(self, status: str) -> Counter:
        child = self._applied_by_status.get(status)
        if child is None:
            child = self._applied_by_status[status] = self.ctx.metrics.results_applied.labels(
                status
            )
        return child

    def _duplicate(self, report: TaskResult) -> None:
        self.ctx.metrics.duplicate_results.inc()
        logger.info("duplicate result dropped", task_id=report.task_id, agent_id=report.agent_id)

    async def _decode_all(self, msgs: Sequence[Msg]) -> list[tuple[Msg, Report]]:
        """The reports of ``msgs``; one that does not decode is terminated and reported.

        One whose subject does not name its agent is refused (``attribution``).
        """
        reports = []
        for msg in msgs:
            try:
                report = decode_report(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                reason = f"not a TaskStarted or TaskResult: {exc}"
                await self.ctx.reject(msg, source="results", reason=reason)
                continue
            refusal = check_reporter(self.ctx.bus.names, msg.subject, report)
            if refusal is not None:
                await refuse(self.ctx, msg, report, refusal)
                continue
            reports.append((msg, report))
        return reports

    async def _handle_after(
        self, before: asyncio.Task[None] | None, msg: Msg, report: Report
    ) -> None:
        if before is not None:
            await asyncio.wait((before,))
        await self._handle_one(msg, report)

    async def _handle_one(self, msg: Msg, report: Report) -> None:
        try:
            refusal = await self._apply(report, msg.subject)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"record of task {report.task_id!r} does not decode: {exc}"
            await self.ctx.reject(msg, source="task_records", reason=reason)
            return
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("report not applied", task_id=report.task_id, error=repr(exc))
            await msg.nak(delay=1.0)
            return
        except Exception:
            logger.exception("report handling failed", task_id=report.task_id)
            await msg.nak(delay=1.0)
            return
        if refusal is not None:
            await refuse(self.ctx, msg, report, refusal)
            return
        await msg.ack()

    async def _index_dead(self, record: TaskRecord) -> None:
        if record.status == "dead":
            await self.dead_letters.index(record)

    async def _apply(self, report: Report, subject: str) -> Refusal | None:
        """Apply ``report`` to its record; why it is refused (nothing applied), or None."""
        capability = _capability(subject)
        refused: list[Refusal] = []

        def transition(record: TaskRecord) -> Changes:
            refused.clear()
            if (refusal := check_record(record, report, capability)) is not None:
                refused.append(refusal)
                return None, None
            return apply_report(record, report, now=utcnow())

        # a record that ends dead is indexed before it is written: a waiter that sees
        # it dead finds it listed (a stale entry of a write that lost is not listed)
        outcome = await self.ctx.records.update(
            report.task_id, transition, before_write=self._index_dead
        )
        if refused:
            return refused[0]
        record = outcome.record
        if record is None:
            self.ctx.metrics.orphan_reports.inc()
            logger.warning(
                "report for unknown task dropped", task_id=report.task_id, subject=subject
            )
            return None
        if outcome.changed:
            self._applied(record.status).inc()
            if record.status == "dead":
                self.ctx.metrics.dead_letters.labels("agent").inc()
        elif isinstance(report, TaskResult):
            self._duplicate(report)
        reported_dead = isinstance(report, TaskResult) and report.status == "dead"
        if record.status == "dead" and not outcome.changed and reported_dead:
            # a duplicate: the index entry may be missing if it was written by another
            # instance's lost race; putting it again is idempotent
            await self.dead_letters.index(record)
        return None
