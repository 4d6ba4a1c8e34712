"""Task records in KV ``<p>_tasks``: compare-and-set transitions and their events.

The scheduler is the single writer of the records, but several scheduler instances
may run: every change is a pure transition of the record and a compare-and-set write
on its revision, re-applied on a conflict. Each write that changes a record's status
is followed by ``TaskEvent``s on ``<p>.events.task.<status>.<task_id>``, so one task's
history replays with the filter ``<p>.events.task.*.<task_id>``.

**Record cache.** The record and revision this instance last wrote (or read) are kept
in a bounded LRU (``RecordCache``), seeded by admission, so a transition needs no KV
read first. A stale entry costs nothing but a retry: the write's compare-and-set
fails (another instance, a cancel, a TTL expiry changed the key), the entry is
dropped and the record read. A write that failed in any other way (a timeout: it may
have landed) drops the entry too. Measured with ``just bench tasks``: one KV read
less per agent report.

**Events** are published without acks (``publish_task_event``), in call order on
one connection, so the events of one task are stored in the order of its
transitions: the record, not the event, is the state of record.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from loguru import logger
from nats.js.api import PubAck

from agentbus.bus import Bus
from agentbus.bus.contract import cluster_size
from agentbus.bus.publisher import EXPECTED_LAST_SUBJECT_SEQ
from agentbus.kv.leader import leader_get
from agentbus.messages import TaskEvent, TaskRecord, decode_record, encode
from agentbus_scheduler.metrics import SchedulerMetrics

MAX_CAS_TRIES = 10
"""Write conflicts in a row after which a transition gives up (``RuntimeError``)."""
EVENT_ACK_INTERVAL_S = 1.0
"""One task event per this interval is published with an ack (``publish_task_event``)."""
CACHE_SIZE = 20_000
"""Records kept by ``RecordCache`` (the least recently used go first; ~1 KiB each)."""

Events = TaskEvent | tuple[TaskEvent, ...] | None
"""The events of one transition, in order (a result applied to a record that never
showed ``running`` publishes ``running`` and then its own status)."""
Transition = Callable[[TaskRecord], tuple[TaskRecord | None, Events]]
"""A pure change of a record: ``(new record, events)``, or ``(None, None)`` to leave it."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``Records.update`` did.

    Attributes:
        record: the record as stored now (None if there is none).
        changed: whether this call wrote it.
    """

    record: TaskRecord | None
    changed: bool


def _log_failed_ack(task_id: str, status: str) -> Callable[[asyncio.Future[PubAck]], None]:
    def done(acked: asyncio.Future[PubAck]) -> None:
        if acked.cancelled():
            logger.warning("task event not acknowledged in time", task_id=task_id, status=status)
        elif (exc := acked.exception()) is not None:
            logger.warning("task event refused", task_id=task_id, status=status, error=repr(exc))

    return done


class _AckSampler:
    """Which events are published with an ack: one per ``EVENT_ACK_INTERVAL_S``."""

    def __init__(self) -> None:
        self.next_at = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + EVENT_ACK_INTERVAL_S
        return True


_sampler = _AckSampler()


async def publish_task_event(bus: Bus, event: TaskEvent) -> None:
    """Publish ``event`` on ``<p>.events.task.<status>.<task_id>``; failures are logged.

    Returns once the event is sent. Events go out as plain publishes that the events
    stream stores without an ack (an ack per event cost the scheduler about a third
    of its CPU per task in ``just bench tasks``); one per ``EVENT_ACK_INTERVAL_S`` asks
    for an ack, and a refusal, or no ack within ``request_timeout_s``, is logged, so
    a stream that stopped storing events is noticed. Best effort: the record, not
    the event, is the state of record.
    """
    subject = bus.names.task_event_subject(event.status, event.task_id)
    try:
        if not _sampler.due():
            await bus.nc.publish(subject, encode(event))
            return
        timeout_s = bus.settings.request_timeout_s
        acked = await bus.js.publish_async(subject, encode(event), wait_stall=timeout_s)
    except (nats.errors.Error, TimeoutError) as exc:
        logger.warning("could not publish task event", task_id=event.task_id, error=repr(exc))
        return
    timer = asyncio.get_running_loop().call_later(timeout_s, acked.cancel)
    acked.add_done_callback(lambda _: timer.cancel())
    acked.add_done_callback(_log_failed_ack(event.task_id, event.status))


async def publish_task_events(bus: Bus, events: Events) -> None:
    """``publish_task_event`` for each of ``events``, in order."""
    if events is None:
        return
    for event in events if isinstance(events, tuple) else (events,):
        await publish_task_event(bus, event)


class RecordCache:
    """The last known ``(record, revision)`` per task id, least recently used dropped."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[TaskRecord, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries

    def get(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The entry of ``task_id``, or None."""
        found = self._entries.get(task_id)
        if found is not None:
            self._entries.move_to_end(task_id)
        return found

    def put(self, record: TaskRecord, revision: int) -> None:
        """Remember ``record`` at ``revision`` unless a later revision is known."""
        found = self._entries.get(record.task_id)
        if found is not None and found[1] > revision:
            return
        self._entries[record.task_id] = (record, revision)
        self._entries.move_to_end(record.task_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, task_id: str) -> None:
        """Forget ``task_id`` (its stored revision is unknown)."""
        self._entries.pop(task_id, None)


class Records:
    """Reads and compare-and-set transitions of task records."""

    def __init__(self, bus: Bus, metrics: SchedulerMetrics, *, cache_size: int = CACHE_SIZE):
        self.bus = bus
        self.metrics = metrics
        self.cache = RecordCache(cache_size)

    async def read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The stored record of ``task_id`` and its revision, or None (read from KV).

        Raises:
            msgspec.DecodeError, msgspec.ValidationError: the stored value is corrupt.
        """
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        try:
            entry = await kv.get(task_id)
        except nats.js.errors.InvalidKeyError:  # a report naming no possible task
            return None
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            # On a cluster a direct get may be answered by a follower that has not
            # applied a record written a moment ago: "not found" is the leader's word.
            if cluster_size(self.bus) > 1:
                return await self._leader_read(task_id)
            return None
        if entry.value is None or entry.revision is None:
            return None
        return decode_record(entry.value), entry.revision

    async def _leader_read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """``read`` answered by the tasks bucket's stream leader (not a follower)."""
        entry = await leader_get(self.bus.js, self.bus.names.tasks_bucket, task_id)
        if entry is None:
            return None
        value, revision = entry
        return decode_record(value), revision

    async def update(
        self,
        task_id: str,
        transition: Transition,
        *,
        before_write: Callable[[TaskRecord], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Apply ``transition`` to the record of ``task_id`` and publish its events.

        The record comes from the cache if known there, else from KV.
        ``before_write(new record)`` runs before each write attempt (e.g. the
        dead-letter index entry, which must exist once a waiter sees the record dead).

        Raises:
            RuntimeError: ``MAX_CAS_TRIES`` write conflicts in a row.
            msgspec.DecodeError, msgspec.ValidationError: the stored value is corrupt.
            nats.errors.Error, TimeoutError: the bus failed (retrying is safe).
        """
        publisher = await self.bus.publisher()
        subject = f"$KV.{self.bus.names.tasks_bucket}.{task_id}"
        for _ in range(MAX_CAS_TRIES):
            found = self.cache.get(task_id)
            if found is None:
                found = await self.read(task_id)
                if found is None:
                    return Outcome(None, False)
                self.cache.put(*found)
            record, revision = found
            updated, events = transition(record)
            if updated is None:
                return Outcome(record, False)
            if before_write is not None:
                await before_write(updated)
            try:
                acked = await publisher.publish(
                    subject, encode(updated), {EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
                )
                written = await acked
            except nats.js.errors.KeyWrongLastSequenceError:
                self.cache.drop(task_id)
                self.metrics.record_conflicts.inc()
                continue
            except BaseException:
                self.cache.drop(task_id)  # it may have landed: the revision is unknown
                raise
            self.cache.put(updated, written)
            await publish_task_events(self.bus, events)
            return Outcome(updated, True)
        raise RuntimeError(f"task {task_id!r}: {MAX_CAS_TRIES} write conflicts in a row")
