"""Waiting for tasks to end, without polling: the machinery behind ``Client.wait*``.

One task is followed through the republished writes of its record (a core
subscription on ``<p>.records.task.<id>``, ``wait_one``), many tasks through the task
events (core subscriptions on ``<p>.events.task.*.<id>``, or on every terminal status
for many tasks) with a record read per finished task (``terminal_records``). A task
that ended by handing its work off is followed to where the work went
(``wait``/``completed`` with ``follow_handoffs``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import msgspec
import nats.js.errors

from agentbus.bus import Bus
from agentbus.bus.contract import cluster_size
from agentbus.errors import (
    AgentBusError,
    NotFoundError,
    RequestTimeoutError,
    TaskWaitTimeoutError,
)
from agentbus.kv.leader import KV_OPERATION, leader_get
from agentbus.messages import (
    TERMINAL_STATUSES,
    AgentsReply,
    ListAgents,
    TaskEvent,
    TaskRecord,
    decode_record,
)
from agentbus.names import check_task_id

decode_event = msgspec.json.Decoder(TaskEvent).decode
"""Decode one ``TaskEvent`` (raises ``msgspec.DecodeError``/``ValidationError``)."""
_WAIT_SUBJECTS_MAX = 64
"""Above this many awaited tasks, one subscription on every task event replaces per-task ones."""


async def ran_out(bus: Bus, task_id: str, timeout_s: float) -> TaskWaitTimeoutError:
    """The error of a wait for ``task_id`` that ran out: where the task is.

    Its status (and latest attempt); for a queued task that no live agent serves
    (asked of the registry), that nobody does.
    """
    try:
        record = await get_record(bus, task_id)
    except (AgentBusError, TimeoutError):
        return TaskWaitTimeoutError(task_id, timeout_s, f"not finished after {timeout_s} s")
    detail = f"{record.status} after {timeout_s} s"
    if record.attempts:
        latest = record.attempts[-1]
        detail += f" (attempt {latest.number}, agent {latest.agent_id})"
    if record.status == "queued":
        try:
            reply = await bus.request(
                bus.names.endpoint("registry", "agents"),
                ListAgents(capability=record.capability),
                AgentsReply,
            )
        except (AgentBusError, TimeoutError):
            return TaskWaitTimeoutError(task_id, timeout_s, detail)  # no registry to ask
        if not reply.agents:
            detail = (
                f"queued: no live agent serves capability {record.capability!r} "
                "(see `agentbus agents`)"
            )
    return TaskWaitTimeoutError(task_id, timeout_s, detail)


async def get_record(bus: Bus, task_id: str) -> TaskRecord:
    """The current record of ``task_id`` (a KV get on ``<p>_tasks``).

    Raises:
        ContractError: ``task_id`` is not a valid task id.
        NotFoundError: no such task.
    """
    check_task_id(task_id)
    kv = await bus.kv(bus.names.tasks_bucket)
    try:
        entry = await kv.get(task_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError) as exc:
        raise NotFoundError(f"task {task_id!r} not found") from exc
    assert entry.value is not None
    return decode_record(entry.value)


def handed_off(record: TaskRecord) -> str | None:
    """The task ``record`` handed its work off to, if it ended by a hand-off."""
    return record.handoff_to if record.status == "succeeded" else None


def _terminal_write(msg: Any) -> TaskRecord | None:
    """The record a republished write carries if it is terminal (not a delete marker)."""
    if msg.headers and msg.headers.get(KV_OPERATION):
        return None
    try:
        record = decode_record(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return record if record.terminal else None


class TaskWaits:
    """Waits for tasks on one ``Bus`` (``Client`` holds one; its methods document them)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.names = bus.names

    async def wait(self, task_id: str, *, timeout_s: float, follow_handoffs: bool) -> TaskRecord:
        """``task_id``'s terminal record, or (``follow_handoffs``) its hand-off chain's end.

        Raises:
            RequestTimeoutError: not terminal within ``timeout_s`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            record = await self.wait_one(task_id, timeout_s=max(deadline - loop.time(), 0.001))
            target = handed_off(record) if follow_handoffs else None
            if target is None:
                return record
            task_id = target

    async def completed(
        self, task_ids: Iterable[str], *, timeout_s: float, follow_handoffs: bool
    ) -> AsyncGenerator[tuple[str, TaskRecord], None]:
        """``(task id asked for, final record)`` pairs, in completion order.

        Records come from ``terminal_records``; a record that handed off is chased
        (``wait``) in a task of its own while the others keep coming.

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
                await done.put(
                    (asked, await self.wait(target, timeout_s=left, follow_handoffs=True))
                )
            except Exception as exc:
                await done.put(exc)

        async def pump() -> None:
            try:
                async for record in self.terminal_records(task_ids, timeout_s=timeout_s):
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

    async def wait_one(
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
            ContractError: ``task_id`` is not a valid task id.
            RequestTimeoutError: not terminal within ``timeout_s`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        subject = self.names.task_record_subject(check_task_id(task_id))
        while True:
            heard: asyncio.Future[Any] = loop.create_future()
            sub = await self.bus.nc.subscribe(subject, future=heard, max_msgs=1)
            try:
                record = await self.read_record(task_id)
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

    async def read_record(self, task_id: str) -> TaskRecord | None:
        """The stored record of ``task_id`` (None if there is none), read cheaply.

        A direct get through ``Bus.publisher()`` (one future, no timer, no KV entry
        object); any reply other than a record or "not found" falls back to ``get``.
        On a cluster, a read from the stream's leader instead (``leader_read``).
        """
        if cluster_size(self.bus) > 1:
            return await self.leader_read(task_id)
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
        if status == "404" or headers.get(KV_OPERATION):
            return None
        if status is None and reply.data:
            try:
                return decode_record(reply.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
        try:
            return await get_record(self.bus, task_id)
        except NotFoundError:
            return None

    async def leader_read(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` as the tasks bucket's leader has it (None: none).

        On a cluster a direct get may be answered by a follower that has not applied
        the last write yet, and a subscription made on one server reaches the others'
        interest a moment later. A read the leader answers closes both gaps for
        ``wait_one``: it sees every write stored before it, and it travels to the
        leader over the same route as the subscription's interest, after it, so a
        write stored after the read is republished to a subscription the leader knows.

        Raises:
            RequestTimeoutError: no answer within the request timeout (no leader).
        """
        try:
            entry = await leader_get(self.bus.js, self.names.tasks_bucket, task_id)
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"task {task_id}", self.bus.settings.request_timeout_s
            ) from exc
        if entry is None:
            return None
        return decode_record(entry[0])

    async def terminal_records(
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
            ContractError: an id is not a valid task id (before anything is read).
            RequestTimeoutError: some tasks were not terminal within ``timeout_s``.
        """
        pending = {check_task_id(t) for t in task_ids}
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def _on_event(msg: Any) -> None:
            try:
                event = decode_event(msg.data)
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
            for record in await self._terminal_now(list(pending)):
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
                        for record in await self._terminal_now(list(pending)):
                            pending.discard(record.task_id)
                            yield record
                    continue
                quiet_since = loop.time()
                if task_id in pending:
                    record = await get_record(self.bus, task_id)
                    if record.terminal:
                        pending.discard(task_id)
                        yield record
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _terminal_now(self, task_ids: list[str]) -> list[TaskRecord]:
        done: list[TaskRecord] = []
        for i in range(0, len(task_ids), 64):
            chunk = task_ids[i : i + 64]
            records = await asyncio.gather(
                *(get_record(self.bus, t) for t in chunk), return_exceptions=True
            )
            done.extend(r for r in records if isinstance(r, TaskRecord) and r.terminal)
        return done
