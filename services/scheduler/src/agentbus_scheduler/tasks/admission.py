"""Task admission: validate, record (idempotently) and enqueue tasks.

A task is accepted once its ``TaskRecord`` (status ``queued``) is in KV ``<p>_tasks``
and its ``Task`` message is on the work stream with ``Nats-Msg-Id`` = task id. The KV
``create`` is the idempotency check: a repeat of an existing id returns the stored
record. If that record is still ``queued`` the task is published again, which heals a
crash between the KV write and the publish; the stream's duplicate window drops the
copy when the first publish did land.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import nats.errors
import nats.js.errors

from agentbus.bus import Bus
from agentbus.bus.publisher import EXPECTED_LAST_SUBJECT_SEQ
from agentbus.errors import ConflictError, ContractError, NotFoundError, UnavailableError
from agentbus.messages import (
    NULL,
    GetTask,
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
    Task,
    TaskEvent,
    TaskRecord,
    TaskReply,
    decode_record,
    encode,
    utcnow,
)
from agentbus.names import check_token
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.tasks.links import Links
from agentbus_scheduler.tasks.ready import ReadyNotices
from agentbus_scheduler.tasks.records import Records, publish_task_event
from agentbus_scheduler.tasks.unserved import LiveAgents

MAX_BATCH = 10_000
"""Most tasks one ``submit_batch`` request may carry."""


def validate(task: SubmitTask) -> None:
    """Check what the message types cannot express.

    Raises:
        ContractError: the capability is not a token, both ``input`` and
            ``input_ref`` are given, or ``deadline`` has no timezone.
    """
    check_token("capability", task.capability)
    if task.input_ref is not None and task.input != NULL:
        raise ContractError(f"task {task.task_id!r}: give either input or input_ref, not both")
    if task.deadline is not None and task.deadline.utcoffset() is None:
        raise ContractError(f"task {task.task_id!r}: deadline needs a timezone (UTC offset)")


def new_record(task: SubmitTask, task_id: str, *, resubmit_of: str | None = None) -> TaskRecord:
    """The ``queued`` record of a newly admitted task."""
    now = utcnow()
    return TaskRecord(
        task_id=task_id,
        capability=task.capability,
        status="queued",
        created_at=now,
        updated_at=now,
        input=task.input,
        input_ref=task.input_ref,
        priority=task.priority,
        max_attempts=task.max_attempts,
        timeout_s=task.timeout_s,
        parent_id=task.parent_id,
        tenant=task.tenant,
        metadata=task.metadata,
        handoff_from=task.handoff_from,
        deadline=task.deadline,
        backoff=task.backoff,
        resubmit_of=resubmit_of,
    )


def task_message(record: TaskRecord) -> Task:
    """The work-stream message of a recorded task."""
    return Task(
        task_id=record.task_id,
        capability=record.capability,
        input=record.input,
        input_ref=record.input_ref,
        priority=record.priority,
        timeout_s=record.timeout_s,
        parent_id=record.parent_id,
        metadata=record.metadata,
        max_attempts=record.max_attempts,
        deadline=record.deadline,
        backoff=record.backoff,
        tenant=record.tenant,
    )


class Admission:
    """Handlers of the ``submit``, ``submit_batch`` and ``get`` endpoints."""

    def __init__(
        self,
        bus: Bus,
        metrics: SchedulerMetrics,
        *,
        concurrency: int = 128,
        records: Records | None = None,
        agents: LiveAgents | None = None,
    ) -> None:
        self.bus = bus
        self.agents = agents
        self.metrics = metrics
        self._concurrency = concurrency
        self.records = records or Records(bus, metrics)
        self.links = Links(bus, self.records)
        self.ready = ReadyNotices(bus)
        self._created = metrics.submitted.labels("created")

    async def submit(self, task: SubmitTask) -> SubmitReply:
        """Admit one task (idempotent on ``task_id``).

        Raises:
            ContractError: the task is invalid.
            ConflictError: ``require_agent`` and no live agent serves its capability
                (a new task only).
            UnavailableError: the KV write or the publish failed; retrying with the
                same ``task_id`` is safe.
        """
        validate(task)
        await self._require_agents([task])
        return await self._admit(task)

    async def submit_batch(self, batch: SubmitTasks) -> SubmitTasksReply:
        """Admit every task of ``batch``; replies are in request order.

        The whole batch is validated first: one invalid task rejects the batch before
        anything is written.

        Raises:
            ContractError: a task is invalid or the batch exceeds ``MAX_BATCH`` tasks.
            ConflictError: a new task has ``require_agent`` and no live agent serves
                its capability (nothing of the batch is written).
            UnavailableError: a write failed (some tasks may be admitted; resubmitting
                the same batch with the same ids is safe).
        """
        if len(batch.tasks) > MAX_BATCH:
            raise ContractError(f"batch of {len(batch.tasks)} tasks exceeds {MAX_BATCH}")
        for index, task in enumerate(batch.tasks):
            try:
                validate(task)
            except ContractError as exc:
                raise ContractError(f"task #{index}: {exc}") from exc
        await self._require_agents(batch.tasks)
        gate = asyncio.Semaphore(self._concurrency)

        async def _one(task: SubmitTask) -> SubmitReply:
            async with gate:
                return await self._admit(task)

        results = await asyncio.gather(*(_one(t) for t in batch.tasks))
        return SubmitTasksReply(results=list(results))

    async def admit(self, task: SubmitTask, *, resubmit_of: str | None = None) -> SubmitReply:
        """Admit ``task`` as ``submit`` does, recording ``resubmit_of`` on a new record.

        Raises:
            ContractError: the task is invalid.
            UnavailableError: the KV write or the publish failed.
        """
        validate(task)
        return await self._admit(task, resubmit_of=resubmit_of)

    async def _require_agents(self, tasks: list[SubmitTask]) -> None:
        """Refuse new tasks with ``require_agent`` whose capability nobody serves.

        Raises:
            ConflictError: the first such task, naming its capability.
            UnavailableError: the live agents are not known yet.
        """
        if self.agents is None:
            return
        for task in tasks:
            if not task.require_agent or await self.agents.serves(task.capability):
                continue
            if task.task_id is not None and await self.read(task.task_id) is not None:
                continue  # a repeat returns the task it admitted before
            self.metrics.submitted.labels("unserved").inc()
            raise ConflictError(
                f"no live agent serves capability {task.capability!r} "
                "(the task asked for one: require_agent)"
            )

    async def get(self, request: GetTask) -> TaskReply:
        """The current record of a task.

        Raises:
            NotFoundError: no record with that id.
        """
        record = await self.read(request.task_id)
        if record is None:
            raise NotFoundError(f"task {request.task_id!r} not found")
        return TaskReply(task=record)

    async def read(self, task_id: str) -> TaskRecord | None:
        """The stored record of ``task_id``, or None."""
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        try:
            entry = await kv.get(task_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None:
            return None
        return decode_record(entry.value)

    async def _admit(self, task: SubmitTask, *, resubmit_of: str | None = None) -> SubmitReply:
        task_id = task.task_id or uuid.uuid4().hex
        try:
            await self.links.check(task)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not admit task {task_id!r}: {exc!r}") from exc
        record = new_record(task, task_id, resubmit_of=resubmit_of)
        kv = await self.bus.kv(self.bus.names.tasks_bucket)
        publisher = await self.bus.publisher()
        try:
            try:  # KeyValue.create, without its cost (agentbus.bus.publisher)
                created = await publisher.publish(
                    f"$KV.{self.bus.names.tasks_bucket}.{task_id}",
                    encode(record),
                    {EXPECTED_LAST_SUBJECT_SEQ: "0"},
                )
                revision = await created
            except nats.js.errors.KeyWrongLastSequenceError:
                existing = await self._existing(task_id)
                if existing is None:  # deleted between create and read: try once more
                    revision = await kv.create(task_id, encode(record))
                else:
                    self.metrics.submitted.labels("existing").inc()
                    return SubmitReply(task=existing, created=False)
            record = await self.links.attach(record, revision)
            if record.terminal:  # its parent or hand-off source was cancelled meanwhile
                return SubmitReply(task=record, created=True)
            seq = await self._publish(record)
        except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
            raise UnavailableError(f"could not admit task {task_id!r}: {exc!r}") from exc
        self._created.inc()
        event = TaskEvent(
            task_id=task_id, capability=record.capability, status="queued", at=record.created_at
        )
        await publish_task_event(self.bus, event)
        # The stream sequence is not written to the record (a KV write per task): the
        # cache holds it for the next write, a cancel that misses the cache looks the
        # message up (``links.find_stream_seq``).
        record = msgspec.structs.replace(record, stream_seq=seq)
        self.records.cache.put(record, revision)
        return SubmitReply(task=record, created=True)

    async def _existing(self, task_id: str) -> TaskRecord | None:
        """The stored record of a repeated submit, its admission finished if need be.

        A record this instance admitted is returned with its ``stream_seq`` (from the
        record cache, if it still holds that revision). A record that never started
        and whose publish is not known to have landed is published again: that heals
        a crash between the KV write and the publish (the stream's duplicate window
        drops the copy if the first publish landed; a retry-queued task's message is
        still on the stream).
        """
        found = await self.records.read(task_id)
        if found is None:
            return None
        existing, revision = found
        cached = self.records.cache.get(task_id)
        if cached is not None and cached[1] == revision:
            existing = cached[0]
        if existing.status == "queued" and not existing.attempts and existing.stream_seq is None:
            existing = await self.links.attach(existing)
            if not existing.terminal:
                seq = await self._publish(existing)
                await self.links.set_stream_seq(existing, None, seq)
        return existing

    async def republish(self, record: TaskRecord) -> bool:
        """Publish the work-stream message of the ``queued`` ``record`` again (heal sweep).

        The record is linked first (a task whose parent was cancelled ends instead).
        ``Nats-Msg-Id`` = task id: a message that landed within the stream's
        duplicate window is not stored twice. Returns whether a message was stored
        (False: a duplicate, or the task ended); its sequence goes into the record.

        Raises:
            nats.errors.Error, TimeoutError, RuntimeError: the bus failed.
        """
        record = await self.links.attach(record)
        if record.terminal:
            return False
        ack = await self.bus.js.publish(
            self.bus.names.task_subject(record.capability, record.priority),
            encode(task_message(record)),
            headers={"Nats-Msg-Id": record.task_id},
        )
        if ack.duplicate:
            return False
        await self.ready.post(record.capability, record.priority)
        await self.links.set_stream_seq(record, None, ack.seq)
        return True

    async def _publish(self, record: TaskRecord) -> int:
        """Put the task on its band's subject, tell idle agents; the stream sequence.

        The ready notice goes out behind the publish, before its ack (``ready``).

        Raises:
            TimeoutError: no ack within the bus request timeout.
            nats.errors.Error: the stream refused the message.
        """
        publisher = await self.bus.publisher()
        acked = await publisher.publish(
            self.bus.names.task_subject(record.capability, record.priority),
            encode(task_message(record)),
            {"Nats-Msg-Id": record.task_id},
        )
        await self.ready.post(record.capability, record.priority, acked)
        return await acked
