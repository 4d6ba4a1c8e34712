"""Dead letters: the index of dead tasks, moves of stuck messages, resubmission.

A task ends ``dead`` in one of three ways:

- **agent**: its last attempt failed retryably, or a delivery exceeded its
  ``max_attempts`` (the agent reports ``TaskResult(dead)`` and terms the message);
- **advisory**: a message hit the consumer's ``max_deliver`` (the backstop above every
  task's budget, ``agentbus.retry.SAFETY_MAX_DELIVER``). In a WorkQueue stream such a
  message *stays*; JetStream publishes a MAX_DELIVERIES advisory naming its sequence,
  which the stream ``<P>_TASK_ADVISORIES`` keeps even while no scheduler runs;
- **sweep**: a sweep finds a delivered message whose record shows every delivery used
  (``agentbus_scheduler.tasks.sweeps``), for advisories lost before the stream existed.

Moving a stuck message = record ``dead`` (compare-and-set, running attempts ``lost``),
index entry, then delete the message; a crash in between repeats the idempotent steps.
Only the holder of the ``scheduler-sweeps`` lease moves messages.

The index is KV ``<p>_dead_tasks``, key ``<capability>.<task_id>``, value ``DeadTask``
(same TTL as the records): listing dead tasks reads the index, not every record.
Resubmitting admits a *new* task (``ResubmitTask``): a record reaches its terminal
state exactly once, so the dead one stays dead and leaves the index.
"""

from __future__ import annotations

import re
import uuid

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentbus.bus import EVENTS_MAX_AGE_S, TASK_RECORD_TTL_S, stream_replicas
from agentbus.errors import ConflictError, NotFoundError
from agentbus.kv.lease import KvLease
from agentbus.kv.replay import replay
from agentbus.messages import (
    DeadTask,
    ErrorInfo,
    ListTasks,
    ResubmitTask,
    SubmitReply,
    SubmitTask,
    TaskRecord,
    TasksReply,
    decode_task,
    encode,
    utcnow,
)
from agentbus.service import report_bad_message
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.admission import Admission
from agentbus_scheduler.tasks.lifecycle import end_task

RESUBMITTABLE = frozenset({"dead", "failed", "expired"})
_RESUBMIT_SUFFIX = re.compile(r"^(?P<base>.+)-r(?P<n>\d+)$")


class MaxDeliverAdvisory(msgspec.Struct, kw_only=True):
    """JetStream's ``io.nats.jetstream.advisory.v1.max_deliver`` (the fields used)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_decode_advisory = msgspec.json.Decoder(MaxDeliverAdvisory).decode


def resubmit_id(task_id: str) -> str:
    """The default id of ``task_id`` resubmitted: ``<id>-r1``, ``<id>-r2`` for ``<id>-r1``.

    Deterministic, so a repeated resubmit request finds the task it created.
    """
    m = _RESUBMIT_SUFFIX.match(task_id)
    new = f"{m['base']}-r{int(m['n']) + 1}" if m else f"{task_id}-r1"
    return new if len(new) <= 128 else uuid.uuid5(uuid.NAMESPACE_URL, task_id).hex


def _key(capability: str, task_id: str) -> str:
    return f"{capability}.{task_id}"


class DeadLetters:
    """The dead-letter index, the advisory consumer and the ``list``/``resubmit`` endpoints."""

    def __init__(self, ctx: SchedulerContext, *, admission: Admission) -> None:
        self.ctx = ctx
        self.admission = admission
        self._sub: JetStreamContext.PullSubscription | None = None

    async def setup(self) -> None:
        """Create the index bucket, the advisory stream and its consumer; idempotent."""
        names, js = self.ctx.bus.names, self.ctx.bus.js
        try:
            await js.key_value(names.dead_tasks_bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                await js.create_key_value(
                    KeyValueConfig(
                        names.dead_tasks_bucket,
                        history=1,
                        ttl=TASK_RECORD_TTL_S,
                        direct=True,
                        replicas=stream_replicas(self.ctx.bus),
                    )
                )
            except nats.js.errors.BadRequestError:
                pass  # created concurrently
        stream = names.task_advisories_stream
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(
                    StreamConfig(
                        name=stream,
                        subjects=[names.max_deliveries_advisories()],
                        retention=RetentionPolicy.LIMITS,
                        storage=StorageType.FILE,
                        max_age=EVENTS_MAX_AGE_S,
                        num_replicas=stream_replicas(self.ctx.bus),
                    )
                )
            except nats.js.errors.BadRequestError:
                await js.stream_info(stream)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                name=names.DEAD_LETTERS_CONSUMER,
                durable_name=names.DEAD_LETTERS_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
            ),
        )
        self._sub = await js.pull_subscribe_bind(names.DEAD_LETTERS_CONSUMER, stream=stream)

    async def close(self) -> None:
        """Unsubscribe from the advisory consumer (the durable stays)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("advisories unsubscribe failed", error=repr(exc))

    # -- index --------------------------------------------------------------------
    async def index(self, record: TaskRecord) -> None:
        """Add the dead ``record`` to the index (idempotent)."""
        entry = DeadTask(
            task_id=record.task_id,
            capability=record.capability,
            dead_at=record.finished_at or record.updated_at,
            attempts=len(record.attempts),
            error=record.error,
        )
        kv = await self.ctx.bus.kv(self.ctx.bus.names.dead_tasks_bucket)
        await kv.put(_key(record.capability, record.task_id), encode(entry))

    async def list_dead(self, request: ListTasks, *, offset: int = 0) -> TasksReply:
        """Dead tasks, newest first, optionally of one capability (reads the index).

        The page starts at index entry ``offset``; ``next_cursor`` is the next
        page's offset. Index entries whose record has expired (records live 7 days)
        or is not dead (the entry is written just before the record; that write
        lost a race) are skipped; ``total`` counts entries.
        """
        kv = await self.ctx.bus.kv(self.ctx.bus.names.dead_tasks_bucket)

        def bad(key: str) -> None:
            logger.warning("dead-letter index entry does not decode", key=key)

        keys = f"{request.capability}.>" if request.capability else ">"
        index = await replay(kv, DeadTask, keys=keys, on_bad=bad)
        entries = sorted(index.values(), key=lambda e: e.dead_at, reverse=True)
        tasks: list[TaskRecord] = []
        end = offset + request.limit
        for entry in entries[offset:end]:
            found = await self.ctx.records.read(entry.task_id)
            # an entry is written before its record ends dead: skip one whose write lost
            if found is not None and found[0].status == "dead":
                tasks.append(found[0])
        more = str(end) if end < len(entries) else None
        return TasksReply(tasks=tasks, total=len(entries), next_cursor=more)

    # -- resubmission -------------------------------------------------------------
    async def resubmit(self, request: ResubmitTask) -> SubmitReply:
        """Admit a new task from an ended one (see ``ResubmitTask``).

        Raises:
            NotFoundError: no such task.
            ConflictError: the task is not dead, failed or expired, or
                ``new_task_id`` belongs to another task.
            UnavailableError: the admission failed; repeating the request is safe.
        """
        found = await self.ctx.records.read(request.task_id)
        if found is None:
            raise NotFoundError(f"task {request.task_id!r} not found")
        old = found[0]
        if old.status not in RESUBMITTABLE:
            raise ConflictError(
                f"task {old.task_id!r} is {old.status}: only dead, failed or expired tasks "
                "can be resubmitted"
            )
        task = SubmitTask(
            capability=old.capability,
            input=old.input,
            input_ref=old.input_ref,
            task_id=request.new_task_id or resubmit_id(old.task_id),
            priority=old.priority,
            max_attempts=request.max_attempts or old.max_attempts,
            timeout_s=old.timeout_s,
            tenant=old.tenant,
            metadata=old.metadata,
            deadline=request.deadline,
            backoff=old.backoff,
        )
        reply = await self.admission.admit(task, resubmit_of=old.task_id)
        if not reply.created and reply.task.resubmit_of != old.task_id:
            raise ConflictError(f"task id {task.task_id!r} is taken by another task")
        if reply.created:
            self.ctx.metrics.resubmitted.inc()
        if old.status == "dead":
            kv = await self.ctx.bus.kv(self.ctx.bus.names.dead_tasks_bucket)
            await kv.delete(_key(old.capability, old.task_id))
        return reply

    # -- stuck messages -----------------------------------------------------------
    async def drain_advisories(self, lease: KvLease, *, wait_s: float = 1.0) -> int:
        """Move the messages named by pending MAX_DELIVERIES advisories; how many.

        Waits up to ``wait_s`` for the first advisory. Stops when the lease is lost
        (unacked advisories go to the next holder).
        """
        sub = self._sub
        if sub is None:
            return 0
        moved, batch, timeout = 0, 1, wait_s
        while lease.held:
            try:
                msgs = await sub.fetch(batch, timeout=timeout)
            except TimeoutError:  # nats-py raises its own or the builtin one
                return moved
            for msg in msgs:
                if not lease.held:
                    return moved
                try:
                    advisory = _decode_advisory(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    reason = f"not a max_deliver advisory: {exc}"
                    await self.ctx.reject(msg, source="task_advisories", reason=reason)
                    continue
                reason = f"delivered {advisory.deliveries} times (max_deliver) without a result"
                if await self.bury(advisory.stream_seq, reason=reason, source="advisory"):
                    moved += 1
                await msg.ack()
            batch, timeout = 64, 0.2
        return moved

    async def bury(self, stream_seq: int, *, reason: str, source: str) -> bool:
        """End the task of work-stream message ``stream_seq`` ``dead``, then delete it.

        Returns whether the task was made dead by this call (False: the message is
        gone, does not decode, or its task had already ended; the message is deleted
        in every case but the first).

        Raises:
            nats.errors.Error, TimeoutError: the bus failed (repeating is safe).
        """
        names = self.ctx.bus.names
        try:
            raw = await self.ctx.bus.js.get_msg(names.tasks_stream, seq=stream_seq)
        except nats.js.errors.NotFoundError:
            return False
        try:
            task = decode_task(raw.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await report_bad_message(
                self.ctx.bus,
                self.ctx.service_metrics,
                source="tasks",
                subject=raw.subject or "",
                reason=f"stuck task message does not decode: {exc}",
            )
            await self.delete(stream_seq, reason="dead")
            return False
        now = utcnow()
        error = ErrorInfo(error_type="MaxDeliveriesExceeded", message=reason, retryable=True)
        outcome = await self.ctx.records.update(
            task.task_id,
            lambda record: end_task(record, "dead", now=now, error=error, reason=reason),
            before_write=self.index,  # listed once a waiter can see it dead
        )
        record = outcome.record
        if record is not None and record.status == "dead" and not outcome.changed:
            await self.index(record)
        if outcome.changed:
            self.ctx.metrics.dead_letters.labels(source).inc()
            logger.warning(
                "task dead: message stuck after its last delivery",
                task_id=task.task_id,
                stream_seq=stream_seq,
                reason=reason,
            )
        await self.delete(stream_seq, reason="dead" if outcome.changed else "finished")
        return outcome.changed

    async def delete(self, stream_seq: int, *, reason: str) -> None:
        """Delete work-stream message ``stream_seq`` (already gone is fine)."""
        try:
            await self.ctx.bus.js.delete_msg(self.ctx.bus.names.tasks_stream, stream_seq)
        except nats.js.errors.NotFoundError:
            return
        except nats.js.errors.APIError as exc:
            if exc.err_code != 10057:  # no message found
                raise
            return
        self.ctx.metrics.swept_messages.labels(reason).inc()
