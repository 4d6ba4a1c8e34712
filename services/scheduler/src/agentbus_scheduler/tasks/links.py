"""Links between task records at admission: subtasks, hand-offs, the stream sequence.

* **Subtasks.** A task submitted with ``parent_id`` is appended to the parent's
  ``children`` (compare-and-set on the parent record) before its message is
  published. The parent must exist and not be terminal: a subtask of a finished task
  is refused (``ConflictError``), and one whose parent is cancelled while it is being
  admitted is recorded ``cancelled`` and never published, so cancelling a parent
  catches every child (``agentbus_scheduler.tasks.cancel``).
* **Hand-offs.** A task submitted with ``handoff_from`` takes over the work of that
  (running) task: the source record gets ``handoff_to`` = the new id, which
  ``Client.wait`` follows once the source ends ``succeeded``, and ``cancel`` follows
  in any state. A task hands off at most once (a second, different target is a
  ``ConflictError``; the same target again is an idempotent repeat).
* **Stream sequence.** A new task's ``stream_seq`` (from the publish ack) is not
  written to its record at admission (it would cost a KV write per task): the
  scheduler's record cache carries it into the record's next write, and a cancel of
  a record without it finds the message by its ``Nats-Msg-Id`` (``find_stream_seqs``).
  A repeated submit that re-publishes a queued task writes it (``set_stream_seq``);
  if the task was cancelled in between, its message is deleted there.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import ConflictError, NotFoundError
from agentbus.messages import ErrorInfo, SubmitTask, TaskEvent, TaskRecord, encode, utcnow
from agentbus_scheduler.tasks.records import Records, publish_task_event

Change = tuple[TaskRecord | None, TaskEvent | None]
FIND_MAX_MESSAGES = 10_000
"""Work-stream messages ``find_stream_seqs`` reads at most per subject."""


def _orphaned(record: TaskRecord, why: str, *, now: datetime) -> TaskRecord:
    """``record`` cancelled at admission because the task it hangs on was cancelled."""
    return msgspec.structs.replace(
        record,
        status="cancelled",
        error=ErrorInfo(error_type="TaskCancelled", message=why),
        finished_at=now,
        updated_at=now,
    )


class Links:
    """Parent, hand-off and stream-sequence bookkeeping of ``Admission``."""

    def __init__(self, bus: Bus, records: Records) -> None:
        self.bus = bus
        self.records = records

    async def check(self, task: SubmitTask) -> None:
        """Refuse a subtask or hand-off whose parent or source cannot take it.

        A repeated submit of an existing task passes (admission returns the stored
        record unchanged, whatever became of its parent since).

        Raises:
            NotFoundError: the parent or hand-off source does not exist.
            ConflictError: it is terminal, or already handed off elsewhere.
        """
        if task.parent_id is None and task.handoff_from is None:
            return
        if task.task_id is not None and await self.records.read(task.task_id) is not None:
            return
        for role, task_id in (("parent", task.parent_id), ("hand-off source", task.handoff_from)):
            if task_id is None:
                continue
            found = await self.records.read(task_id)
            if found is None:
                raise NotFoundError(f"{role} task {task_id!r} not found")
            record = found[0]
            if record.terminal:
                raise ConflictError(
                    f"{role} task {task_id!r} is {record.status}: it takes no more tasks"
                )
            if role == "hand-off source" and record.handoff_to not in (None, task.task_id):
                raise ConflictError(f"task {task_id!r} already handed off to {record.handoff_to!r}")

    async def attach(self, record: TaskRecord, revision: int | None = None) -> TaskRecord:
        """Link a created ``record`` to its parent and hand-off source (idempotent).

        Returns the record as stored: ``cancelled`` (and never to be published) when
        the parent or source is no longer running. ``revision`` is the record's
        revision if known (a fresh create); otherwise the record is re-read.

        Raises:
            nats.errors.Error, TimeoutError, RuntimeError: the bus failed; the submit
                may be repeated with the same id.
        """
        task_id = record.task_id
        ended: str | None = None
        if record.parent_id is not None:

            def add_child(parent: TaskRecord) -> Change:
                if task_id in parent.children or parent.terminal:
                    return None, None
                children = [*parent.children, task_id]
                return msgspec.structs.replace(parent, children=children), None

            outcome = await self.records.update(record.parent_id, add_child)
            if outcome.record is None or outcome.record.terminal:
                ended = f"parent task {record.parent_id!r} ended before this subtask started"
        if record.handoff_from is not None and ended is None:

            def point(source: TaskRecord) -> Change:
                if source.handoff_to == task_id or source.terminal:
                    return None, None
                return msgspec.structs.replace(source, handoff_to=task_id), None

            outcome = await self.records.update(record.handoff_from, point)
            if outcome.record is None or outcome.record.handoff_to != task_id:
                ended = f"hand-off source {record.handoff_from!r} ended before the hand-off"
        if ended is None:
            return record
        now = utcnow()
        event = TaskEvent(
            task_id=task_id, capability=record.capability, status="cancelled", at=now, reason=ended
        )
        if revision is not None:
            try:
                kv = await self.bus.kv(self.bus.names.tasks_bucket)
                cancelled = _orphaned(record, ended, now=now)
                await kv.update(task_id, encode(cancelled), last=revision)
                await publish_task_event(self.bus, event)
                return cancelled
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # changed meanwhile: cancel what is stored

        def orphan(stored: TaskRecord) -> Change:
            if stored.terminal:
                return None, None
            return _orphaned(stored, ended, now=now), event

        outcome = await self.records.update(task_id, orphan)
        return outcome.record or _orphaned(record, ended, now=now)

    async def set_stream_seq(self, record: TaskRecord, revision: int | None, seq: int) -> None:
        """Store ``seq`` in the record; delete the message if the task was cancelled.

        Failures are logged: the record then lacks ``stream_seq`` and a cancel relies
        on the cancel notice alone.
        """
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        try:
            if revision is not None:
                try:
                    await kv.update(
                        record.task_id,
                        encode(msgspec.structs.replace(record, stream_seq=seq)),
                        last=revision,
                    )
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass  # changed meanwhile (started, or cancelled): apply to what is stored

            def with_seq(stored: TaskRecord) -> Change:
                if stored.terminal or stored.stream_seq == seq:
                    return None, None
                return msgspec.structs.replace(stored, stream_seq=seq), None

            outcome = await self.records.update(record.task_id, with_seq)
            if outcome.record is not None and outcome.record.status == "cancelled":
                await self.bus.js.delete_msg(self.bus.names.tasks_stream, seq)
        except nats.js.errors.NotFoundError:
            pass  # the message is gone already
        except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
            logger.warning("stream_seq not recorded", task_id=record.task_id, error=repr(exc))


async def find_stream_seqs(
    bus: Bus, records: Iterable[TaskRecord], *, limit: int = FIND_MAX_MESSAGES
) -> list[int]:
    """The work-stream sequences of the messages of ``records`` still on the stream.

    Reads each band subject concerned from its first message on (``messages_of``),
    at most ``limit`` messages per subject. The fallback of a cancel that lacks
    ``stream_seq``; failures are logged (the cancel notice still stops agents, the
    sweep removes delivered leftovers).
    """
    wanted: dict[str, set[str]] = {}
    for record in records:
        subject = bus.names.task_subject(record.capability, record.priority)
        wanted.setdefault(subject, set()).add(record.task_id)
    found: list[int] = []
    for subject, ids in wanted.items():
        try:
            seqs, _ = await messages_of(bus, subject, ids, limit=limit)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("task messages not looked up", subject=subject, error=repr(exc))
            continue
        found.extend(seqs.values())
    return found


async def messages_of(
    bus: Bus, subject: str, task_ids: set[str], *, limit: int = FIND_MAX_MESSAGES
) -> tuple[dict[str, int], bool]:
    """Which of ``task_ids`` have a message on work-stream ``subject``, and where.

    Reads ``subject`` from its first message on (``next_by_subj``), matching
    ``Nats-Msg-Id`` (the task id), until every id is found, the end, or ``limit``
    messages. Returns ``({task id: stream sequence}, complete)``; ``complete`` is
    True when the subject was read to its end (an id not found has no message).

    Raises:
        nats.errors.Error, TimeoutError: the bus failed.
    """
    ids = set(task_ids)
    found: dict[str, int] = {}
    seq, read = 1, 0
    while ids and read < limit:
        try:
            raw = await bus.js.get_msg(bus.names.tasks_stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found, True  # no (more) messages on the subject
        if raw.seq is None:
            return found, True
        read, seq = read + 1, raw.seq + 1
        msg_id = (raw.headers or {}).get("Nats-Msg-Id")
        if msg_id in ids:
            ids.discard(msg_id)
            found[msg_id] = raw.seq
    return found, not ids
