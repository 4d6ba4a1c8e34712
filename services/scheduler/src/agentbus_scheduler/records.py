"""Task records in KV ``<p>_tasks``: compare-and-set transitions and their events.

The scheduler is the single writer of the records, but several scheduler instances
may run: every change is a read, a pure transition and a compare-and-set write on
the read revision, re-applied on a conflict. Each write that changes a record's
status is followed by a ``TaskEvent`` on ``<p>.events.task.<status>.<task_id>``, so
one task's history replays with the filter ``<p>.events.task.*.<task_id>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.messages import TaskEvent, TaskRecord, decode_record, encode
from agentbus_scheduler.metrics import SchedulerMetrics

MAX_CAS_TRIES = 10
"""Write conflicts in a row after which a transition gives up (``RuntimeError``)."""

Transition = Callable[[TaskRecord], tuple[TaskRecord | None, TaskEvent | None]]
"""A pure change of a record: ``(new record, event)``, or ``(None, None)`` to leave it."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``Records.update`` did.

    Attributes:
        record: the record as stored now (None if there is none).
        changed: whether this call wrote it.
    """

    record: TaskRecord | None
    changed: bool


async def publish_task_event(bus: Bus, event: TaskEvent) -> None:
    """Publish ``event`` on ``<p>.events.task.<status>.<task_id>``; failures are logged.

    Best effort: the record, not the event, is the state of record.
    """
    subject = bus.names.task_event_subject(event.status, event.task_id)
    try:
        await bus.js.publish(subject, encode(event))
    except (nats.errors.Error, TimeoutError) as exc:
        logger.warning("could not publish task event", task_id=event.task_id, error=repr(exc))


class Records:
    """Reads and compare-and-set transitions of task records."""

    def __init__(self, bus: Bus, metrics: SchedulerMetrics) -> None:
        self.bus = bus
        self.metrics = metrics

    async def read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The stored record of ``task_id`` and its revision, or None.

        Raises:
            msgspec.DecodeError, msgspec.ValidationError: the stored value is corrupt.
        """
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        try:
            entry = await kv.get(task_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return decode_record(entry.value), entry.revision

    async def update(self, task_id: str, transition: Transition) -> Outcome:
        """Apply ``transition`` to the record of ``task_id`` and publish its event.

        Raises:
            RuntimeError: ``MAX_CAS_TRIES`` write conflicts in a row.
            msgspec.DecodeError, msgspec.ValidationError: the stored value is corrupt.
            nats.errors.Error, TimeoutError: the bus failed (retrying is safe).
        """
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        for _ in range(MAX_CAS_TRIES):
            found = await self.read(task_id)
            if found is None:
                return Outcome(None, False)
            record, revision = found
            updated, event = transition(record)
            if updated is None:
                return Outcome(record, False)
            try:
                await kv.update(task_id, encode(updated), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self.metrics.record_conflicts.inc()
                continue
            if event is not None:
                await publish_task_event(self.bus, event)
            return Outcome(updated, True)
        raise RuntimeError(f"task {task_id!r}: {MAX_CAS_TRIES} write conflicts in a row")
