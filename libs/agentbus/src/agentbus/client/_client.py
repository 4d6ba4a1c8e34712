"""The caller's side: submit tasks, wait for results, query agents and deployments.

``Client`` is the one public face; the machinery of its larger domains lives in
modules of their own: waits (``agentbus.client.waits``: no polling, a record republish
subscription for one task, task events for many), a task's history
(``agentbus.client.history``), batched submits (``agentbus.client._batching``), whole-bucket
reads (``agentbus.kv.replay``). Dead letters, deployments and the registry are
plain requests to the services' endpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from agentbus.bus import Bus
from agentbus.bus.blobs import pack, unpack
from agentbus.client._batching import SubmitBatcher, batches
from agentbus.client.fleet import FleetCalls
from agentbus.client.history import task_history
from agentbus.client.waits import TaskWaits, get_record, ran_out
from agentbus.client.waits import handed_off as handed_off  # re-exported
from agentbus.errors import RequestTimeoutError
from agentbus.messages import (
    Backoff,
    CancelReply,
    CancelTask,
    ListTasks,
    ResubmitTask,
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
    TaskEvent,
    TaskRecord,
    TasksReply,
    TaskStatus,
)
from agentbus.messaging.sending import Messaging
from agentbus.names import check_task_id, check_token
from agentbus.settings import BusSettings

if TYPE_CHECKING:
    from agentbus.events import Events

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


def new_task_id() -> str:
    """A fresh task id (32 hex characters)."""
    return uuid.uuid4().hex


class Client(FleetCalls, Messaging):
    """Submit tasks and wait for them over a ``Bus``.

    ``send``, ``broadcast``, ``ask`` and ``message_outcome`` (``agentbus.messaging``)
    talk to agents directly, as the connection's name.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.names = bus.names
        self._submits = SubmitBatcher(bus)
        self._waits = TaskWaits(bus)

    @classmethod
    async def connect(cls, settings: BusSettings | None = None) -> Client:
        """Connect a new ``Bus`` and wrap it (close with ``await client.close()``)."""
        return cls(await Bus.connect(settings, name="agentbus-client"))

    async def close(self) -> None:
        """Close the underlying connection."""
        await self.bus.close()

    @property
    def events(self) -> Events:
        """Publish events on topics (``agentbus.events``), as this connection's name."""
        from agentbus.events import Events

        return Events(self.bus, source=self.bus.nc.options.get("name") or "client")

    # -- submit -------------------------------------------------------------------
    async def build_task(
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
        require_agent: bool = False,
    ) -> SubmitTask:
        """Build a ``SubmitTask``: encodes ``input`` and offloads it when large.

        ``input`` is any msgspec-encodable value (Structs, dicts, lists, bytes, ...).
        ``deadline`` (timezone-aware) is when the task stops being startable (it then
        ends ``expired``); ``backoff`` the delay policy between attempts;
        ``require_agent`` has the scheduler refuse the task (``ConflictError``) when
        no live agent serves ``capability``.

        Raises:
            ContractError: ``capability`` is not a valid token, or ``task_id`` or
                ``parent_id`` is not a valid task id.
        """
        check_token("capability", capability)
        task_id = check_task_id(task_id) if task_id is not None else new_task_id()
        if parent_id is not None:
            check_task_id(parent_id, "parent id")
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
            require_agent=require_agent,
        )

    async def submit(
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
        require_agent: bool = False,
    ) -> TaskRecord:
        """Submit one task and return its record (status ``queued`` or later).

        The options are those of ``build_task()``. Submitting an existing ``task_id``
        returns the existing record unchanged (idempotency). Submits made concurrently
        on one client travel together in batch requests (``agentbus.client._batching``).

        Raises:
            ContractError: an invalid argument, or the scheduler rejected the task.
            ConflictError: ``require_agent=True`` and no live agent serves it.
            UnavailableError: no scheduler is running.
            RequestTimeoutError: the scheduler did not answer in time.
        """
        request = await self.build_task(
            capability,
            input,
            task_id=task_id,
            priority=priority,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            parent_id=parent_id,
            tenant=tenant,
            metadata=metadata,
            deadline=deadline,
            backoff=backoff,
            require_agent=require_agent,
        )
        return await self.submit_request(request)

    async def submit_request(self, request: SubmitTask) -> TaskRecord:
        """Submit a ``SubmitTask`` built by ``build_task()`` (maybe adjusted); its record.

        Raises:
            ContractError, UnavailableError, RequestTimeoutError: as ``submit``.
        """
        reply = await self._submits.submit(request)
        return reply.task

    async def submit_many(self, tasks: Sequence[SubmitTask]) -> list[SubmitReply]:
        """Submit many tasks in as few batch requests as fit under 512 KiB each."""
        replies: list[SubmitReply] = []
        for batch in batches(tasks):
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
            ContractError: ``task_id`` is not a valid task id.
            NotFoundError: no such task.
        """
        return await get_record(self.bus, task_id)

    async def wait(
        self, task_id: str, *, timeout_s: float = 60.0, follow_handoffs: bool = True
    ) -> TaskRecord:
        """Wait until ``task_id`` is terminal and return its record.

        With ``follow_handoffs`` (the default), a task that ended by handing its work
        off (``succeeded`` with ``handoff_to``) is followed to the task that took it
        over, recursively: the record returned is the end of the chain (its
        ``handoff_from`` names the previous link).

        Raises:
            ContractError: ``task_id`` is not a valid task id.
            TaskWaitTimeoutError: not terminal within ``timeout_s`` seconds (a
                ``RequestTimeoutError`` whose message says the task's status and,
                for a queued task, whether any live agent serves its capability).
        """
        try:
            return await self._waits.wait(
                task_id, timeout_s=timeout_s, follow_handoffs=follow_handoffs
            )
        except RequestTimeoutError as exc:
            raise await ran_out(self.bus, task_id, timeout_s) from exc

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

    def completed(
        self, task_ids: Iterable[str], *, timeout_s: float = 600.0, follow_handoffs: bool = True
    ) -> AsyncGenerator[tuple[str, TaskRecord], None]:
        """``(task id asked for, final record)`` pairs, in completion order.

        As ``wait_many``, for callers that must tell which task a followed hand-off
        chain started from.

        Raises:
            ContractError: an id is not a valid task id (before anything is read).
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        return self._waits.completed(task_ids, timeout_s=timeout_s, follow_handoffs=follow_handoffs)

    async def cancel(
        self, task_id: str, *, recursive: bool = True, reason: str = ""
    ) -> CancelReply:
        """Cancel ``task_id`` and (``recursive``) its subtasks; see ``CancelTask``.

        A queued task never starts; a running one has its handler cancelled within a
        second; a finished one keeps its status (``reply.task.status`` tells).

        Raises:
            ContractError: ``task_id`` is not a valid task id.
            NotFoundError: no such task.
            UnavailableError: no scheduler is running.
        """
        check_task_id(task_id)
        return await self.bus.request(
            self.names.endpoint("scheduler", "cancel"),
            CancelTask(task_id=task_id, recursive=recursive, reason=reason),
            CancelReply,
        )

    async def history(self, task_id: str, *, timeout_s: float = 5.0) -> list[TaskEvent]:
        """Every ``TaskEvent`` of ``task_id`` still in the events stream, oldest first.

        Replays ``<p>.events.task.*.<task_id>`` with an ordered consumer; an unknown
        task has an empty history.

        Raises:
            ContractError: ``task_id`` is not a valid task id.
            RequestTimeoutError: the replay did not finish within ``timeout_s``.
        """
        return await task_history(self.bus, task_id, timeout_s=timeout_s)

    async def dead_tasks(self, capability: str | None = None, *, limit: int = 100) -> TasksReply:
        """Dead tasks (newest first, at most ``limit``) and how many there are in all.

        Raises:
            ContractError: ``capability`` is not a valid token.
            UnavailableError: no scheduler is running.
        """
        return await self.list_tasks("dead", capability=capability, limit=limit)

    async def list_tasks(
        self,
        status: TaskStatus | None = "queued",
        *,
        capability: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tenant: str | None = None,
    ) -> TasksReply:
        """One page of tasks with ``status`` (None: any), see ``ListTasks``.

        Pass the reply's ``next_cursor`` as ``cursor`` for the next page (None: the
        last page). Dead tasks come newest first; others in the order their records
        were last written, at most ``SCHEDULER_LIST_MAX_RECORDS`` read per page.

        Raises:
            ContractError: an argument is invalid (status, capability, cursor, limit).
            UnavailableError: no scheduler is running.
        """
        if capability is not None:
            check_token("capability", capability)
        if parent_id is not None:
            check_task_id(parent_id, "parent id")
        request = ListTasks(
            status=status,
            capability=capability,
            parent_id=parent_id,
            limit=limit,
            cursor=cursor,
            tenant=tenant,
        )
        return await self.bus.request(self.names.endpoint("scheduler", "list"), request, TasksReply)

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
            ContractError: ``task_id`` or ``new_task_id`` is not a valid task id.
            NotFoundError: no such task.
            ConflictError: the task has not ended dead, failed or expired, or
                ``new_task_id`` is taken.
        """
        check_task_id(task_id)
        if new_task_id is not None:
            check_task_id(new_task_id, "new task id")
        request = ResubmitTask(
            task_id=task_id, new_task_id=new_task_id, max_attempts=max_attempts, deadline=deadline
        )
        return await self.bus.request(
            self.names.endpoint("scheduler", "resubmit"), request, SubmitReply
        )

    async def output(self, record: TaskRecord, type_: type[T] = Any) -> T:  # type: ignore[assignment]
        """Decode a succeeded task's output as ``type_`` (fetching it if stored by ref)."""
        return await unpack(self.bus, record.output, record.output_ref, type_)
