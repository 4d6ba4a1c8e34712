"""Cancellation: the ``cancel`` endpoint (``CancelTask`` → ``CancelReply``).

For each task to cancel, in this order:

1. its record goes ``cancelled`` (compare-and-set; terminal, so exactly once: a result
   that arrives later is a dropped duplicate). Its running attempt is recorded
   ``cancelled``. A record that is already terminal is left as it is.
2. one ``CancelNotice`` naming every task cancelled by the call goes out on
   ``<p>.control.cancel``: an agent running one cancels its handler and terminates the
   message; an agent that is delivered one later terminates it unstarted.
3. the task's message is deleted from the work stream (``record.stream_seq``, looked
   up by the task id when the record lacks it: ``links.find_stream_seqs``), so a
   queued task never starts, and a running one is not redelivered if its agent dies.

The walk starts at the requested task, follows ``handoff_to`` (the task that took the
work over) and, when ``recursive``, every ``children`` entry, breadth first. Children
read after the parent's write are complete: admission refuses a subtask of a terminal
parent (``agentbus_scheduler.admission``), so no child can slip in after the walk.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import NotFoundError
from agentbus.messages import (
    CancelNotice,
    CancelReply,
    CancelTask,
    ErrorInfo,
    TaskEvent,
    TaskRecord,
    encode,
    utcnow,
)
from agentbus_scheduler.links import find_stream_seqs
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.records import Records, Transition

NOTICE_MAX_IDS = 1000
"""Task ids per ``CancelNotice`` (keeps a notice far below the NATS payload limit)."""


def cancel_transition(*, now: datetime, reason: str) -> Transition:
    """The pure change that cancels a non-terminal record (terminal ones stay)."""
    error = ErrorInfo(error_type="TaskCancelled", message=reason or "cancelled")

    def transition(record: TaskRecord) -> tuple[TaskRecord | None, TaskEvent | None]:
        if record.terminal:
            return None, None
        attempts = [
            msgspec.structs.replace(a, status="cancelled", finished_at=now)
            if a.status == "running"
            else a
            for a in record.attempts
        ]
        updated = msgspec.structs.replace(
            record,
            status="cancelled",
            attempts=attempts,
            error=error,
            finished_at=now,
            next_attempt_at=None,
            updated_at=now,
        )
        event = TaskEvent(
            task_id=record.task_id,
            capability=record.capability,
            status="cancelled",
            at=now,
            attempt=max((a.number for a in record.attempts), default=0),
            agent_id=record.agent_id,
            error=error,
            reason=reason or "cancelled",
        )
        return updated, event

    return transition


class Canceller:
    """Handler of the ``cancel`` endpoint."""

    def __init__(self, bus: Bus, records: Records, metrics: SchedulerMetrics) -> None:
        self.bus = bus
        self.records = records
        self.metrics = metrics

    async def cancel(self, request: CancelTask) -> CancelReply:
        """Cancel ``request.task_id`` (and its subtree when ``recursive``).

        Raises:
            NotFoundError: no such task.
            UnavailableError, RuntimeError: the bus failed mid-way; repeating the
                request is safe (cancelled records stay cancelled, the rest follow).
        """
        if await self.records.read(request.task_id) is None:
            raise NotFoundError(f"task {request.task_id!r} not found")
        transition = cancel_transition(now=utcnow(), reason=request.reason)
        cancelled: list[str] = []
        seqs: list[int] = []
        unknown: list[TaskRecord] = []
        seen: set[str] = set()
        todo = deque([request.task_id])
        while todo:
            task_id = todo.popleft()
            if task_id in seen:
                continue
            seen.add(task_id)
            outcome = await self.records.update(task_id, transition)
            record = outcome.record
            if record is None:
                continue
            if outcome.changed:
                cancelled.append(task_id)
                if record.stream_seq is not None:
                    seqs.append(record.stream_seq)
                else:  # not in this instance's record cache (links.find_stream_seqs)
                    unknown.append(record)
            if record.handoff_to:
                todo.append(record.handoff_to)
            if request.recursive:
                todo.extend(record.children)
        if cancelled:
            self.metrics.cancelled.inc(len(cancelled))
            await self._notify(cancelled)
            await self._delete(seqs + await find_stream_seqs(self.bus, unknown))
            logger.info("tasks cancelled", task_id=request.task_id, count=len(cancelled))
        found = await self.records.read(request.task_id)
        assert found is not None
        return CancelReply(task=found[0], cancelled=cancelled)

    async def _notify(self, task_ids: list[str]) -> None:
        subject = self.bus.names.cancel_subject()
        at = utcnow()
        for i in range(0, len(task_ids), NOTICE_MAX_IDS):
            notice = CancelNotice(task_ids=task_ids[i : i + NOTICE_MAX_IDS], at=at)
            await self.bus.nc.publish(subject, encode(notice))
        await self.bus.nc.flush()

    async def _delete(self, seqs: list[int]) -> None:
        for seq in seqs:
            try:
                await self.bus.js.delete_msg(self.bus.names.tasks_stream, seq)
            except nats.js.errors.NotFoundError:
                pass  # acked or termed already
            except (nats.errors.Error, TimeoutError) as exc:
                # the cancel notice still stops agents that hear it
                logger.warning("task message not deleted", seq=seq, error=repr(exc))
