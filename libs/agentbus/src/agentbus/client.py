"""The caller's side: submit tasks, wait for results, query agents and deployments.

Waiting never polls: one task is followed through a KV watch on its record, many
tasks through the task events (a core subscription on ``<p>.events.task.>``) with a
record read per finished task.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import nats.js.errors
from nats.js.api import DeliverPolicy

from agentbus._batching import BATCH_MAX_BYTES, SubmitBatcher, task_size
from agentbus.blobs import pack, unpack
from agentbus.bus import Bus
from agentbus.errors import NotFoundError, RequestTimeoutError
from agentbus.messages import (
    TERMINAL_STATUSES,
    AgentInfo,
    AgentsReply,
    Backoff,
    CancelReply,
    CancelTask,
    DeleteDeployment,
    Deploy,
    Deployment,
    DeployReply,
    GetNodeStatus,
    ListAgents,
    ListNodes,
    ListPlacements,
    ListTasks,
    NodeInfo,
    NodesReply,
    NodeStatusReply,
    PlacementsReply,
    ResubmitTask,
    ScaleDeployment,
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
    TaskEvent,
    TaskRecord,
    TasksReply,
    decode_record,
)
from agentbus.names import check_token
from agentbus.settings import BusSettings

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
_decode_event = msgspec.json.Decoder(TaskEvent).decode
_KV_OPERATION = "KV-Operation"
_WAIT_SUBJECTS_MAX = 64
"""Above this many awaited tasks, one subscription on every task event replaces per-task ones."""


def new_task_id() -> str:
    """A fresh task id (32 hex characters)."""
    return uuid.uuid4().hex


def _terminal_write(msg: Any) -> TaskRecord | None:
    """The record a republished write carries if it is terminal (not a delete marker)."""
    if msg.headers and msg.headers.get(_KV_OPERATION):
        return None
    try:
        record = decode_record(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return record if record.terminal else None


def handed_off(record: TaskRecord) -> str | None:
    """The task ``record`` handed its work off to, if it ended by a hand-off."""
    return record.handoff_to if record.status == "succeeded" else None


class Client:
    """Submit tasks and wait for them over a ``Bus``."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.names = bus.names
        self._submits = SubmitBatcher(bus)

    @classmethod
    async def connect(cls, settings: BusSettings | None = None) -> Client:
        """Connect a new ``Bus`` and wrap it (close with ``await client.close()``)."""
        return cls(await Bus.connect(settings, name="agentbus-client"))

    async def close(self) -> None:
        """Close the underlying connection."""
        await self.bus.close()

    # -- submit -------------------------------------------------------------------
    async def task(
        self,
        capability: str,
        input: Any = None,
        *,
        task_id: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        parent_id: str | None = None,
        tenant: str | None = None,
        metadata: dict[str, str] | None = None,
        deadline: datetime | None = None,
        backoff: Backoff | None = None,
    ) -> SubmitTask:
        """Build a ``SubmitTask``: encodes ``input`` and offloads it when large.

        ``input`` is any msgspec-encodable value (Structs, dicts, lists, bytes, ...).
        ``deadline`` (timezone-aware) is when the task stops being startable (it then
        ends ``expired``); ``backoff`` the delay policy between attempts.

        Raises:
            ContractError: ``capability`` is not a valid token.
        """
        check_token("capability", capability)
        task_id = task_id or new_task_id()
        raw, ref = await pack(self.bus, input, name=f"tasks/{task_id}/input")
        return SubmitTask(
            capability=capability,
            input=raw,
            input_ref=ref,
            task_id=task_id,
            priority=priority,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            parent_id=parent_id,
            tenant=tenant,
            metadata=metadata or {},
            deadline=deadline,
            backoff=backoff,
        )

    async def submit(self, capability: str, input: Any = None, **options: Any) -> TaskRecord:
        """Submit one task and return its record (status ``queued`` or later).

        ``options`` are those of ``task()``. Submitting an existing ``task_id`` returns
        the existing record unchanged (idempotency). Submits made concurrently on one
        client travel together in batch requests (``agentbus._batching``).

        Raises:
            ContractError: the scheduler rejected the task.
            UnavailableError: no scheduler is running.
            RequestTimeoutError: the scheduler did not answer in time.
        """
        return await self.submit_request(await self.task(capability, input, **options))

    async def submit_request(self, request: SubmitTask) -> TaskRecord:
        """Submit a ``SubmitTask`` built by ``task()`` (maybe adjusted); its record.

        Raises:
            ContractError, UnavailableError, RequestTimeoutError: as ``submit``.
        """
        reply = await self._submits.submit(request)
        return reply.task

    async def submit_many(self, tasks: Sequence[SubmitTask]) -> list[SubmitReply]:
        """Submit many tasks in as few batch requests as fit under 512 KiB each."""
        replies: list[SubmitReply] = []
        for batch in _batches(tasks):
            reply = await self.bus.request(
                self.names.endpoint("scheduler", "submit_batch"),
                SubmitTasks(tasks=batch),
                SubmitTasksReply,
                timeout_s=max(self.bus.settings.request_timeout_s, 30.0),
            )
            replies.extend(reply.results)
        return replies

    # -- read and wait ------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The current record of ``task_id``.

        Raises:
            NotFoundError: no such task.
        """
        kv = await self.bus.kv(self.names.tasks_bucket)
        try:
            entry = await kv.get(task_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError) as exc:
            raise NotFoundError(f"task {task_id!r} not found") from exc
        assert entry.value is not None
        return decode_record(entry.value)

    async def wait(
        self, task_id: str, *, timeout_s: float = 60.0, follow_handoffs: bool = True
    ) -> TaskRecord:
        """Wait until ``task_id`` is terminal and return its record.

        With ``follow_handoffs`` (the default), a task that ended by handing its work
        off (``succeeded`` with ``handoff_to``) is followed to the task that took it
        over, recursively: the record returned is the end of the chain (its
        ``handoff_from`` names the previous link).

        Raises:
            RequestTimeoutError: not terminal within ``timeout_s`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            record = await self._wait_one(task_id, timeout_s=max(deadline - loop.time(), 0.001))
            target = handed_off(record) if follow_handoffs else None
            if target is None:
                return record
            task_id = target

    async def wait_many(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, follow_handoffs: bool = True
    ) -> AsyncIterator[TaskRecord]:
        """Yield each task's terminal record as it finishes, in completion order.

        Hand-offs are followed as by ``wait``: the record yielded for a task that
        handed off is that of the end of its chain.

        Raises:
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        pairs = self.completed(task_ids, timeout_s=timeout_s, follow_handoffs=follow_handoffs)
        async for _, record in pairs:
            yield record

    async def wait_all(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, follow_handoffs: bool = True
    ) -> list[TaskRecord]:
        """Wait until every task is terminal; their records in the order of ``task_ids``.

        Raises:
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        ids = list(task_ids)
        pairs = self.completed(ids, timeout_s=timeout_s, follow_handoffs=follow_handoffs)
        found = {asked: record async for asked, record in pairs}
        return [found[t] for t in ids]

    async def wait_first(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, follow_handoffs: bool = True
    ) -> TaskRecord:
        """Wait until one of the tasks is terminal and return its record.

        Raises:
            RequestTimeoutError: none was terminal within ``timeout_s``.
        """
        pairs = self.completed(task_ids, timeout_s=timeout_s, follow_handoffs=follow_handoffs)
        try:
            async for _, record in pairs:
                return record
        finally:
            await pairs.aclose()
        raise RequestTimeoutError("no tasks given", timeout_s)

    async def completed(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, follow_handoffs: bool = True
    ) -> AsyncGenerator[tuple[str, TaskRecord], None]:
        """``(task id asked for, final record)`` pairs, in completion order.

        As ``wait_many``, for callers that must tell which task a followed hand-off
        chain started from.

        Raises:
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        done: asyncio.Queue[tuple[str, TaskRecord] | BaseException | None] = asyncio.Queue()
        chasers: set[asyncio.Task[None]] = set()

        async def chase(asked: str, target: str) -> None:
            try:
                left = max(deadline - loop.time(), 0.001)
                await done.put((asked, await self.wait(target, timeout_s=left)))
            except Exception as exc:
                await done.put(exc)

        async def pump() -> None:
            try:
                async for record in self._wait_many_once(task_ids, timeout_s=timeout_s):
                    target = handed_off(record) if follow_handoffs else None
                    if target is None:
                        await done.put((record.task_id, record))
                    else:
                        chasers.add(asyncio.create_task(chase(record.task_id, target)))
            except Exception as exc:
                await done.put(exc)
            await done.put(None)

        pumping = asyncio.create_task(pump())
        pump_done = False
        try:
            # a chaser puts its item before it ends: once the pump is done, the queue is
            # empty and every chaser has ended, everything was yielded
            while not (pump_done and done.empty() and all(c.done() for c in chasers)):
                item = await done.get()
                if item is None:
                    pump_done = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in (pumping, *chasers):
                t.cancel()
            await asyncio.gather(pumping, *chasers, return_exceptions=True)

    async def cancel(
        self, task_id: str, *, recursive: bool = True, reason: str = ""
    ) -> CancelReply:
        """Cancel ``task_id`` and (``recursive``) its subtasks; see ``CancelTask``.

        A queued task never starts; a running one has its handler cancelled within a
        second; a finished one keeps its status (``reply.task.status`` tells).

        Raises:
            NotFoundError: no such task.
            UnavailableError: no scheduler is running.
        """
        return await self.bus.request(
            self.names.endpoint("scheduler", "cancel"),
            CancelTask(task_id=task_id, recursive=recursive, reason=reason),
            CancelReply,
        )

    async def _wait_one(
        self, task_id: str, *, timeout_s: float = 60.0, recheck_s: float = 5.0
    ) -> TaskRecord:
        """Wait until ``task_id`` itself is terminal (no hand-off following).

        Subscribes (core NATS, no consumer) to ``<p>.records.task.<task_id>``, where
        the tasks bucket republishes each write of the record once it is stored
        (``Bus.ensure``), so the terminal write itself is the notification and needs
        no confirming read (a core subscriber of ``$KV.<p>_tasks.<id>`` would also
        hear compare-and-set writes the store then refuses). The record is read once
        after subscribing (it may already be terminal); a write stored after that
        read is republished after the subscription was in place, so none is missed.
        The subscription takes one message (a future, not a callback task: the
        cheapest kind in nats-py); a write that is not terminal (``running``) renews
        it and reads again. With no write for ``recheck_s`` seconds (missed during a
        reconnect) the record is read again. A KV watch per call would create a
        consumer per task (the server's consumer limit was hit at 64 waits in flight
        in ``just bench tasks``).

        Raises:
            RequestTimeoutError: not terminal within ``timeout_s`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        subject = self.names.task_record_subject(task_id)
        while True:
            heard: asyncio.Future[Any] = loop.create_future()
            sub = await self.bus.nc.subscribe(subject, future=heard, max_msgs=1)
            try:
                record = await self._read_record(task_id)
                if record is not None and record.terminal:
                    return record
                left = deadline - loop.time()
                if left <= 0:
                    raise RequestTimeoutError(f"task {task_id}", timeout_s)
                await asyncio.wait((heard,), timeout=min(recheck_s, left))
                if heard.done() and (written := _terminal_write(heard.result())) is not None:
                    return written
            finally:
                heard.cancel()
                await sub.unsubscribe()

    async def _read_record(self, task_id: str) -> TaskRecord | None:
        """The stored record of ``task_id`` (None if there is none), read cheaply.

        A direct get through ``Bus.publisher()`` (one future, no timer, no KV entry
        object); any reply other than a record or "not found" falls back to ``get``.
        """
        bucket = self.names.tasks_bucket
        publisher = await self.bus.publisher()
        try:
            reply = await (
                await publisher.request(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{task_id}")
            )
        except TimeoutError as exc:
            raise RequestTimeoutError(f"task {task_id}", publisher.timeout_s) from exc
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404" or headers.get(_KV_OPERATION):
            return None
        if status is None and reply.data:
            try:
                return decode_record(reply.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
        try:
            return await self.get(task_id)
        except NotFoundError:
            return None

    async def _wait_many_once(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, recheck_s: float = 30.0
    ) -> AsyncIterator[TaskRecord]:
        """Each task's terminal record as it finishes (hand-offs not followed).

        Follows the tasks' terminal events (``TaskEvent``, published after the record
        write): one core subscription per task on ``<p>.events.task.*.<task_id>``, or
        one per terminal status (``<p>.events.task.<status>.*``) when more than
        ``_WAIT_SUBJECTS_MAX`` tasks are awaited.
        The record is read after its event. Events are best effort and are missed
        during a reconnect, so the pending records are read again after a reconnect
        and, as a backstop, after ``recheck_s`` seconds without an event.

        Raises:
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        pending = set(task_ids)
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def _on_event(msg: Any) -> None:
            try:
                event = _decode_event(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return
            if event.status in TERMINAL_STATUSES and event.task_id in pending:
                queue.put_nowait(event.task_id)

        nc = self.bus.nc
        if len(pending) > _WAIT_SUBJECTS_MAX:  # every terminal event, no other transition
            subjects = [self.names.task_event_subject(s, "*") for s in sorted(TERMINAL_STATUSES)]
        else:
            subjects = [self.names.task_history(t) for t in pending]
        subs = [await nc.subscribe(subject, cb=_on_event) for subject in subjects]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        reconnects = nc.stats["reconnects"]
        quiet_since = loop.time()
        try:
            for record in await self._terminal_records(list(pending)):
                pending.discard(record.task_id)
                yield record
            while pending:
                left = deadline - loop.time()
                if left <= 0:
                    raise RequestTimeoutError(f"{len(pending)} tasks", timeout_s)
                try:
                    task_id = await asyncio.wait_for(queue.get(), min(1.0, left))
                except TimeoutError:
                    missed = nc.stats["reconnects"] != reconnects
                    if missed or loop.time() - quiet_since >= recheck_s:
                        reconnects, quiet_since = nc.stats["reconnects"], loop.time()
                        for record in await self._terminal_records(list(pending)):
                            pending.discard(record.task_id)
                            yield record
                    continue
                quiet_since = loop.time()
                if task_id in pending:
                    record = await self.get(task_id)
                    if record.terminal:
                        pending.discard(task_id)
                        yield record
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _terminal_records(self, task_ids: list[str]) -> list[TaskRecord]:
        done: list[TaskRecord] = []
        for i in range(0, len(task_ids), 64):
            chunk = task_ids[i : i + 64]
            records = await asyncio.gather(*(self.get(t) for t in chunk), return_exceptions=True)
            done.extend(r for r in records if isinstance(r, TaskRecord) and r.terminal)
        return done

    async def history(self, task_id: str, *, timeout_s: float = 5.0) -> list[TaskEvent]:
        """Every ``TaskEvent`` of ``task_id`` still in the events stream, oldest first.

        Replays ``<p>.events.task.*.<task_id>`` with an ordered consumer; an unknown
        task has an empty history.

        Raises:
            RequestTimeoutError: the replay did not finish within ``timeout_s``.
        """
        subject = self.names.task_history(task_id)
        info = await self.bus.js.stream_info(self.names.events_stream, subjects_filter=subject)
        if not info.state.subjects:
            return []
        sub = await self.bus.js.subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        events: list[TaskEvent] = []
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    msg = await sub.next_msg(timeout=timeout_s)
                    try:
                        events.append(_decode_event(msg.data))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        pass  # not a TaskEvent: skip it
                    if msg.metadata.num_pending == 0:
                        return events
        except TimeoutError as exc:
            raise RequestTimeoutError(f"history of task {task_id}", timeout_s) from exc
        finally:
            await sub.unsubscribe()

    async def dead_tasks(self, capability: str | None = None, *, limit: int = 100) -> TasksReply:
        """Dead tasks (newest first, at most ``limit``) and how many there are in all.

        Raises:
            UnavailableError: no scheduler is running.
        """
        return await self.bus.request(
            self.names.endpoint("scheduler", "list"),
            ListTasks(status="dead", capability=capability, limit=limit),
            TasksReply,
        )

    async def resubmit(
        self,
        task_id: str,
        *,
        new_task_id: str | None = None,
        max_attempts: int | None = None,
        deadline: datetime | None = None,
    ) -> SubmitReply:
        """Run an ended (dead, failed, expired) task again as a new task.

        The new task gets ``new_task_id`` (default ``<task_id>-r<n>``, so repeating the
        call is idempotent), a fresh attempt budget and ``resubmit_of`` = ``task_id``.

        Raises:
            NotFoundError: no such task.
            ConflictError: the task has not ended dead, failed or expired, or
                ``new_task_id`` is taken.
        """
        request = ResubmitTask(
            task_id=task_id, new_task_id=new_task_id, max_attempts=max_attempts, deadline=deadline
        )
        return await self.bus.request(
            self.names.endpoint("scheduler", "resubmit"), request, SubmitReply
        )

    async def output(self, record: TaskRecord, type_: type[T] = Any) -> T:  # type: ignore[assignment]
        """Decode a succeeded task's output as ``type_`` (fetching it if stored by ref)."""
        return await unpack(self.bus, record.output, record.output_ref, type_)

    # -- registry and fleet -------------------------------------------------------
    async def agents(self, capability: str | None = None) -> list[AgentInfo]:
        """Live agents (optionally only those with ``capability``), from the registry."""
        reply = await self.bus.request(
            self.names.endpoint("registry", "agents"),
            ListAgents(capability=capability),
            AgentsReply,
        )
        return reply.agents

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, from the registry."""
        reply = await self.bus.request(
            self.names.endpoint("registry", "nodes"), ListNodes(), NodesReply
        )
        return reply.nodes

    async def deploy(self, deployment: Deployment) -> DeployReply:
        """Create or update a deployment; the scheduler places its replicas."""
        return await self.bus.request(
            self.names.endpoint("scheduler", "deploy"), Deploy(deployment=deployment), DeployReply
        )

    async def delete_deployment(self, name: str) -> DeployReply:
        """Delete a deployment; its replicas are stopped by their supervisors."""
        return await self.bus.request(
            self.names.endpoint("scheduler", "delete"), DeleteDeployment(name=name), DeployReply
        )

    async def scale(self, name: str, replicas: int) -> DeployReply:
        """Set the replica count of deployment ``name`` (other fields stay as stored).

        Raises:
            NotFoundError: no such deployment.
            ConflictError: the spec kept changing under the scheduler's compare-and-set.
        """
        return await self.bus.request(
            self.names.endpoint("scheduler", "scale"),
            ScaleDeployment(name=name, replicas=replicas),
            DeployReply,
        )

    async def placements(self, deployment: str | None = None) -> PlacementsReply:
        """Placements and unplaced replicas (with reasons) of one deployment, or all."""
        return await self.bus.request(
            self.names.endpoint("scheduler", "placements"),
            ListPlacements(deployment=deployment),
            PlacementsReply,
        )

    async def deployments(self) -> dict[str, Deployment]:
        """Stored deployment specs by name (read from KV ``<p>_deployments``)."""
        return await self.bucket_values(self.names.deployments_bucket, Deployment)

    async def node_status(self, node_id: str, *, timeout_s: float | None = None) -> NodeStatusReply:
        """What node ``node_id``'s supervisor runs (``<p>.supervisor.<node_id>.status``).

        Raises:
            UnavailableError: no supervisor of that node answers.
            RequestTimeoutError: no reply within ``timeout_s`` (default from settings).
        """
        return await self.bus.request(
            f"{self.names.prefix}.supervisor.{node_id}.status",
            GetNodeStatus(),
            NodeStatusReply,
            timeout_s=timeout_s,
        )

    async def bucket_values(self, bucket: str, type_: type[S]) -> dict[str, S]:
        """Every current entry of KV ``bucket`` decoded as ``type_``, by key.

        One watch replay (not ``keys()`` plus a get per key, which can end early under
        concurrent writes, nats.py #995); entries that do not decode are skipped.

        Raises:
            UnavailableError: the bucket does not exist.
        """
        kv = await self.bus.kv(bucket)
        decoder = msgspec.json.Decoder(type_)
        found: dict[str, S] = {}
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.operation is None and entry.value:
                    try:
                        found[entry.key] = decoder.decode(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return dict(sorted(found.items()))


def _batches(tasks: Sequence[SubmitTask]) -> Iterable[list[SubmitTask]]:
    batch: list[SubmitTask] = []
    size = 0
    for task in tasks:
        n = task_size(task)
        if batch and size + n > BATCH_MAX_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(task)
        size += n
    if batch:
        yield batch
