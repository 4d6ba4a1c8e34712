"""Apply agent reports (``TaskStarted``, ``TaskResult``) to the task records.

The scheduler is the single writer of KV ``<p>_tasks``. Reports come from the
WorkQueue stream ``<P>_RESULTS`` through the durable pull consumer
``scheduler-results``; each is acked after its record write, so a crash before the
write redelivers it. The first result per task wins; later results are counted as
duplicates and dropped. Writes are compare-and-set on the record revision and are
re-applied on a conflict (a second scheduler instance may write too).

The state transition is the pure function ``apply_report`` (with ``next_status``
deciding where a result leads), so retries can be added there later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus import Bus
from agentbus.messages import (
    Attempt,
    TaskEvent,
    TaskRecord,
    TaskResult,
    TaskStarted,
    TaskStatus,
    decode_record,
    decode_report,
    encode,
    utcnow,
)
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.settings import SchedulerSettings

Report = TaskStarted | TaskResult
_MAX_CAS_TRIES = 10


def next_status(record: TaskRecord, result: TaskResult) -> TaskStatus:
    """Where ``result`` takes a non-terminal ``record``.

    Today a failed attempt is final (``failed``); this is where retries
    (``record.max_attempts``, backoff) and dead letters will decide otherwise.
    """
    return result.status


def _with_attempt(attempts: Sequence[Attempt], attempt: Attempt) -> list[Attempt]:
    """``attempts`` with the entry of ``attempt.number`` replaced or appended, sorted."""
    others = [a for a in attempts if a.number != attempt.number]
    return sorted([*others, attempt], key=lambda a: a.number)


def apply_report(
    record: TaskRecord, report: Report, *, now: datetime
) -> tuple[TaskRecord | None, TaskEvent | None]:
    """The record after ``report`` and the event to emit; ``(None, None)`` if unchanged.

    A terminal record never changes (a late ``TaskStarted`` never moves it back to
    running; a second ``TaskResult`` is a duplicate).
    """
    if record.terminal:
        return None, None
    if isinstance(report, TaskStarted):
        current = next((a for a in record.attempts if a.number == report.attempt), None)
        if current is not None and (
            current.status != "running" or current.agent_id == report.agent_id
        ):
            return None, None  # redelivered report, or a stale one for a finished attempt
        attempt = Attempt(
            number=report.attempt, agent_id=report.agent_id, started_at=report.started_at
        )
        updated = msgspec.structs.replace(
            record,
            status="running",
            agent_id=report.agent_id,
            attempts=_with_attempt(record.attempts, attempt),
            updated_at=now,
        )
        event = TaskEvent(
            task_id=record.task_id,
            capability=record.capability,
            status="running",
            at=now,
            attempt=report.attempt,
            agent_id=report.agent_id,
        )
        return updated, event
    status = next_status(record, report)
    attempt = Attempt(
        number=report.attempt,
        agent_id=report.agent_id,
        started_at=report.started_at,
        finished_at=report.finished_at,
        status="failed" if report.status == "dead" else report.status,
        error=report.error,
    )
    updated = msgspec.structs.replace(
        record,
        status=status,
        agent_id=report.agent_id,
        attempts=_with_attempt(record.attempts, attempt),
        output=report.output,
        output_ref=report.output_ref,
        error=report.error,
        finished_at=report.finished_at if status in ("succeeded", "failed") else None,
        updated_at=now,
    )
    event = TaskEvent(
        task_id=record.task_id,
        capability=record.capability,
        status=status,
        at=now,
        attempt=report.attempt,
        agent_id=report.agent_id,
        error=report.error,
    )
    return updated, event


class ResultsConsumer:
    """Pulls agent reports and applies them to task records until stopped."""

    def __init__(
        self,
        bus: Bus,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
        service_metrics: ServiceMetrics,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.service_metrics = service_metrics
        self._sub: JetStreamContext.PullSubscription | None = None

    async def setup(self) -> None:
        """Create (or update) the durable consumer and bind to it; idempotent."""
        names = self.bus.names
        await self.bus.js.add_consumer(
            names.results_stream,
            ConsumerConfig(
                name=names.RESULTS_CONSUMER,
                durable_name=names.RESULTS_CONSUMER,
                filter_subject=names.results_all(),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.settings.results_ack_wait_s,
                max_ack_pending=max(1000, 4 * self.settings.results_batch),
            ),
        )
        self._sub = await self.bus.js.pull_subscribe_bind(
            durable=names.RESULTS_CONSUMER, stream=names.results_stream
        )

    async def close(self) -> None:
        """Unsubscribe from the consumer (the durable stays for the next start).

        A pull subscription left open would stall the connection's drain: nats-py
        does not mark its status messages done.
        """
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("results unsubscribe failed", error=repr(exc))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and apply reports in batches until ``stop`` is set."""
        if self._sub is None:
            await self.setup()
        sub = self._sub
        assert sub is not None
        while not stop.is_set():
            try:
                msgs = await sub.fetch(
                    self.settings.results_batch, timeout=self.settings.results_fetch_timeout_s
                )
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nats-py raises either kind when nothing arrived
            except Exception as exc:
                logger.warning("results fetch failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle_batch(msgs)
            except Exception:  # unacked reports are redelivered after ack_wait
                logger.exception("results batch failed")

    async def handle_batch(self, msgs: Sequence[Msg]) -> None:
        """Apply a batch: reports of one task in order, different tasks concurrently."""
        groups: dict[str, list[tuple[Msg, Report]]] = {}
        for msg in msgs:
            try:
                report = decode_report(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await report_bad_message(
                    self.bus,
                    self.service_metrics,
                    source="results",
                    subject=msg.subject,
                    reason=f"not a TaskStarted or TaskResult: {exc}",
                )
                await msg.term()
                continue
            groups.setdefault(report.task_id, []).append((msg, report))
        await asyncio.gather(*(self._handle_group(group) for group in groups.values()))

    async def _handle_group(self, group: list[tuple[Msg, Report]]) -> None:
        for msg, report in group:
            try:
                await self._apply(report, msg.subject)
            except (nats.errors.Error, TimeoutError) as exc:
                logger.warning("report not applied", task_id=report.task_id, error=repr(exc))
                await msg.nak(delay=1.0)
                continue
            except Exception:
                logger.exception("report handling failed", task_id=report.task_id)
                await msg.nak(delay=1.0)
                continue
            await msg.ack()

    async def _apply(self, report: Report, subject: str) -> None:
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        for _ in range(_MAX_CAS_TRIES):
            try:
                entry = await kv.get(report.task_id)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                self.metrics.orphan_reports.inc()
                logger.warning(
                    "report for unknown task dropped", task_id=report.task_id, subject=subject
                )
                return
            assert entry.value is not None
            assert entry.revision is not None
            record = decode_record(entry.value)
            updated, event = apply_report(record, report, now=utcnow())
            if updated is None:
                if isinstance(report, TaskResult):
                    self.metrics.duplicate_results.inc()
                    logger.info(
                        "duplicate result dropped", task_id=report.task_id, agent_id=report.agent_id
                    )
                return
            try:
                await kv.update(report.task_id, encode(updated), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self.metrics.record_conflicts.inc()
                continue
            self.metrics.results_applied.labels(updated.status).inc()
            if event is not None:
                await self._emit(event)
            return
        raise RuntimeError(f"task {report.task_id!r}: {_MAX_CAS_TRIES} write conflicts in a row")

    async def _emit(self, event: TaskEvent) -> None:
        try:
            await self.bus.publish_event("task", event.status, event)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("could not publish task event", task_id=event.task_id, error=repr(exc))
