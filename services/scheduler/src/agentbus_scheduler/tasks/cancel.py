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
parent (``agentbus_scheduler.tasks.admission``), so no child can slip in after the walk.
"""

from __future__ import annotations

import functools
from collections import deque

import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.errors import NotFoundError
from agentbus.messages import (
    CancelNotice,
    CancelReply,
    CancelTask,
    TaskRecord,
    encode,
    utcnow,
)
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.lifecycle import cancel_task
from agentbus_scheduler.tasks.links import find_stream_seqs

NOTICE_MAX_IDS = 1000
"""Task ids per ``CancelNotice`` (keeps a notice far below the NATS payload limit)."""


class Canceller:
    """Handler of the ``cancel`` endpoint."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx

    async def cancel(self, request: CancelTask) -> CancelReply:
        """Cancel ``request.task_id`` (and its subtree when ``recursive``).

        Raises:
            NotFoundError: no such task.
            UnavailableError, RuntimeError: the bus failed mid-way; repeating the
                request is safe (cancelled records stay cancelled, the rest follow).
        """
        if await self.ctx.records.read(request.task_id) is None:
            raise NotFoundError(f"task {request.task_id!r} not found")
        transition = functools.partial(cancel_task, now=utcnow(), reason=request.reason)
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
            outcome = await self.ctx.records.update(task_id, transition)
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
            self.ctx.metrics.cancelled.inc(len(cancelled))
            await self._notify(cancelled)
            await self._delete(seqs + await find_stream_seqs(self.ctx.bus, unknown))
            logger.info("tasks cancelled", task_id=request.task_id, count=len(cancelled))
        found = await self.ctx.records.read(request.task_id)
        assert found is not None
        return CancelReply(task=found[0], cancelled=cancelled)

    async def _notify(self, task_ids: list[str]) -> None:
        subject = self.ctx.bus.names.cancel_subject()
        at = utcnow()
        for i in range(0, len(task_ids), NOTICE_MAX_IDS):
            notice = CancelNotice(task_ids=task_ids[i : i + NOTICE_MAX_IDS], at=at)
            await self.ctx.bus.nc.publish(subject, encode(notice))
        await self.ctx.bus.nc.flush()

    async def _delete(self, seqs: list[int]) -> None:
        for seq in seqs:
            try:
                await self.ctx.bus.js.delete_msg(self.ctx.bus.names.tasks_stream, seq)
            except nats.js.errors.NotFoundError:
                pass  # acked or termed already
            except (nats.errors.Error, TimeoutError) as exc:
                # the cancel notice still stops agents that hear it
                logger.warning("task message not deleted", seq=seq, error=repr(exc))
