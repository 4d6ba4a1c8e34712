"""Apply agent reports (``TaskStarted``, ``TaskResult``) to the task records.

The scheduler is the single writer of KV ``<p>_tasks``. Reports come from the
WorkQueue stream ``<P>_RESULTS`` through the durable pull consumer
``scheduler-results``; each is acked after its record write, so a crash before the
write redelivers it. The first result per task wins; later results are counted as
duplicates and dropped. Writes are compare-and-set (``records.Records``), the
transitions pure functions (``lifecycle.apply_report``). A task that ends ``dead`` is
added to the dead-letter index (``deadletters.DeadLetters``).

A report that does not decode is terminated and reported (``ErrorEvent``, metric); a
report whose task record is corrupt is terminated the same way, never retried.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

import msgspec
import nats.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus import Bus
from agentbus.messages import TaskRecord, TaskResult, decode_report, utcnow
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_scheduler.deadletters import DeadLetters
from agentbus_scheduler.lifecycle import Report, apply_report
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.records import Records
from agentbus_scheduler.settings import SchedulerSettings


class ResultsConsumer:
    """Pulls agent reports and applies them to task records until stopped."""

    def __init__(
        self,
        bus: Bus,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
        service_metrics: ServiceMetrics,
        *,
        records: Records,
        dead_letters: DeadLetters,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.service_metrics = service_metrics
        self.records = records
        self.dead_letters = dead_letters
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
        """Fetch and apply reports until ``stop`` is set.

        Fetching does not wait for the reports fetched before to be applied (a batch
        used to wait for its slowest record write): each report is applied in a task
        of its own, after the reports of the same task fetched before it (per-task
        order), with at most ``2 * results_batch`` applies at once. On stop, applies
        in flight get ``results_fetch_timeout_s`` to finish; any cut short is
        redelivered after the consumer's AckWait.
        """
        if self._sub is None:
            await self.setup()
        sub = self._sub
        assert sub is not None
        window = asyncio.Semaphore(2 * self.settings.results_batch)
        last: dict[str, asyncio.Task[None]] = {}  # task id -> its latest apply

        def applied(task_id: str, done: asyncio.Task[None]) -> None:
            window.release()
            if last.get(task_id) is done:
                del last[task_id]

        try:
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
                for msg, report in await self._decode_all(msgs):
                    await window.acquire()
                    before = last.get(report.task_id)
                    apply = asyncio.create_task(self._handle_after(before, msg, report))
                    last[report.task_id] = apply
                    apply.add_done_callback(functools.partial(applied, report.task_id))
        finally:
            if last:
                pending = set(last.values())
                _, late = await asyncio.wait(pending, timeout=self.settings.results_fetch_timeout_s)
                for apply in late:
                    apply.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def handle_batch(self, msgs: Sequence[Msg]) -> None:
        """Apply a batch: reports of one task in order, different tasks concurrently."""
        groups: dict[str, list[tuple[Msg, Report]]] = {}
        for msg, report in await self._decode_all(msgs):
            groups.setdefault(report.task_id, []).append((msg, report))
        await asyncio.gather(*(self._handle_group(group) for group in groups.values()))

    async def _decode_all(self, msgs: Sequence[Msg]) -> list[tuple[Msg, Report]]:
        """The reports of ``msgs``; one that does not decode is terminated and reported."""
        reports = []
        for msg in msgs:
            try:
                reports.append((msg, decode_report(msg.data)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await report_bad_message(
                    self.bus,
                    self.service_metrics,
                    source="results",
                    subject=msg.subject,
                    reason=f"not a TaskStarted or TaskResult: {exc}",
                )
                await msg.term()
        return reports

    async def _handle_after(
        self, before: asyncio.Task[None] | None, msg: Msg, report: Report
    ) -> None:
        if before is not None:
            await asyncio.wait((before,))
        await self._handle_one(msg, report)

    async def _handle_group(self, group: list[tuple[Msg, Report]]) -> None:
        for msg, report in group:
            await self._handle_one(msg, report)

    async def _handle_one(self, msg: Msg, report: Report) -> None:
        try:
            await self._apply(report, msg.subject)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await report_bad_message(
                self.bus,
                self.service_metrics,
                source="task_records",
                subject=msg.subject,
                reason=f"record of task {report.task_id!r} does not decode: {exc}",
            )
            await msg.term()
            return
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("report not applied", task_id=report.task_id, error=repr(exc))
            await msg.nak(delay=1.0)
            return
        except Exception:
            logger.exception("report handling failed", task_id=report.task_id)
            await msg.nak(delay=1.0)
            return
        await msg.ack()

    async def _index_dead(self, record: TaskRecord) -> None:
        if record.status == "dead":
            await self.dead_letters.index(record)

    async def _apply(self, report: Report, subject: str) -> None:
        # a record that ends dead is indexed before it is written: a waiter that sees
        # it dead finds it listed (a stale entry of a write that lost is not listed)
        outcome = await self.records.update(
            report.task_id,
            lambda record: apply_report(record, report, now=utcnow()),
            before_write=self._index_dead,
        )
        record = outcome.record
        if record is None:
            self.metrics.orphan_reports.inc()
            logger.warning("report for unknown task dropped", task_id=report.task_id,
                           subject=subject)  # fmt: skip
            return
        if outcome.changed:
            self.metrics.results_applied.labels(record.status).inc()
            if record.status == "dead":
                self.metrics.dead_letters.labels("agent").inc()
        elif isinstance(report, TaskResult):
            self.metrics.duplicate_results.inc()
            logger.info("duplicate result dropped", task_id=report.task_id,
                        agent_id=report.agent_id)  # fmt: skip
        reported_dead = isinstance(report, TaskResult) and report.status == "dead"
        if record.status == "dead" and not outcome.changed and reported_dead:
            # a duplicate: the index entry may be missing if it was written by another
            # instance's lost race; putting it again is idempotent
            await self.dead_letters.index(record)
