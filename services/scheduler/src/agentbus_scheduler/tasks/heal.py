"""Heal queued tasks whose work-stream message is missing (a sweeps-lease duty).

Admission writes the record, then publishes the message. A scheduler that dies (or
loses NATS) in between leaves a ``queued`` record with no message: the caller got an
error and may resubmit (which heals it, ``Admission._existing``), but nothing else
would ever start the task. Each sweep, the ``scheduler-sweeps`` lease holder reads up
to ``sweep_max_records`` task records (``agentbus.kv.replay.scan``, in write order,
going on from there next time) and picks those that are ``queued``, never started
(no attempts), have no known ``stream_seq`` and are older than ``heal_grace_s``.
For each it makes sure the message is really missing before publishing it again
(``Nats-Msg-Id`` = task id):

- **within the stream's duplicate window** (record younger than the window less a
  margin): publishing again is the check: a message that landed (even if already
  delivered and acked) makes the publish a duplicate the stream drops;
- **older**: its band subject is read (``links.messages_of``, at most
  ``sweep_max_messages`` messages; a longer backlog waits for a later pass): a task
  with a message, queued, delivered or under a lease, is left alone. A task whose
  message was acked away has its result in the results stream, not yet applied: if
  any report of the capability is pending the task waits for a later pass; then
  the record is read again and published only if still untouched.

A task found with its message is remembered (up to ``MAX_REMEMBERED`` ids) and not
checked again: a backlog costs one check per task, not one per pass. Each heal is
logged and counted (``agentbus_scheduler_tasks_healed_total``).
"""

from __future__ import annotations

from datetime import timedelta

from loguru import logger

from agentbus.kv.lease import KvLease
from agentbus.kv.replay import scan
from agentbus.messages import TaskRecord, utcnow
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.admission import Admission
from agentbus_scheduler.tasks.links import messages_of

MAX_REMEMBERED = 200_000
"""Task ids known to have their message, kept to skip them (then forgotten at once)."""
WINDOW_MARGIN_S = 15.0
"""How far inside the stream's duplicate window a record must be for the fast path."""


def _untouched(record: TaskRecord) -> bool:
    return record.status == "queued" and not record.attempts and record.stream_seq is None


class Healer:
    """Finds and heals queued records without a work-stream message."""

    def __init__(self, ctx: SchedulerContext, admission: Admission) -> None:
        self.ctx = ctx
        self.admission = admission
        self._after = 0
        self._present: set[str] = set()

    async def heal_once(self, lease: KvLease) -> int:
        """One pass over the next ``sweep_max_records`` records; how many were healed.

        Raises:
            nats.errors.Error, TimeoutError: the bus failed (the next pass retries).
        """
        bus, settings = self.ctx.bus, self.ctx.settings
        now = utcnow()
        grace = timedelta(seconds=settings.heal_grace_s)

        if len(self._present) > MAX_REMEMBERED:
            self._present.clear()

        def candidate(record: TaskRecord) -> bool:
            return (
                _untouched(record)
                and now - record.created_at >= grace
                and record.task_id not in self._present
            )

        limit = settings.sweep_max_records
        page = await scan(
            bus.js,
            bus.names.tasks_bucket,
            TaskRecord,
            after=self._after,
            keep=candidate,
            limit=limit,
            max_entries=limit,
        )
        self._after = page.after or 0
        if not page.entries:
            return 0
        config = (await bus.js.stream_info(bus.names.tasks_stream)).config
        window = timedelta(seconds=(config.duplicate_window or 0) - WINDOW_MARGIN_S)
        healed = 0
        by_subject: dict[str, list[TaskRecord]] = {}
        for _, _, record in page.entries:
            if not lease.held:
                return healed
            if now - record.created_at < window:
                healed += await self._heal(record, why="inside the duplicate window")
            else:
                subject = bus.names.task_subject(record.capability, record.priority)
                by_subject.setdefault(subject, []).append(record)
        for subject, records in by_subject.items():
            if lease.held:
                healed += await self._heal_old(subject, records)
        return healed

    async def _heal_old(self, subject: str, records: list[TaskRecord]) -> int:
        """Heal those of ``records`` (all on ``subject``) whose message is missing."""
        bus = self.ctx.bus
        ids = {r.task_id for r in records}
        found, complete = await messages_of(
            bus, subject, ids, limit=self.ctx.settings.sweep_max_messages
        )
        self._present.update(found)
        missing = [r for r in records if r.task_id not in found]
        if not missing or not complete:
            return 0
        capability = missing[0].capability
        results = await bus.js.stream_info(
            bus.names.results_stream, subjects_filter=bus.names.capability_results(capability)
        )
        if results.state.subjects:  # reports not applied yet: one may end these tasks
            logger.debug("heal deferred: reports pending", capability=capability)
            return 0
        healed = 0
        for record in missing:
            found_now = await self.ctx.records.read(record.task_id)
            if found_now is not None and _untouched(found_now[0]):
                healed += await self._heal(found_now[0], why="no message on the work stream")
        return healed

    async def _heal(self, record: TaskRecord, *, why: str) -> int:
        if not await self.admission.republish(record):
            self._present.add(record.task_id)  # its message landed (or it ended)
            return 0
        self.ctx.metrics.healed.inc()
        logger.warning(
            "queued task had no work-stream message: published again",
            task_id=record.task_id,
            capability=record.capability,
            created_at=record.created_at.isoformat(),
            why=why,
        )
        return 1
