"""The client's hot path: concurrent submits coalesced into batch requests.

The scheduler's ``submit`` endpoint handles one request at a time (``nats.micro``
runs an endpoint's handler serially) at three JetStream round trips each, which caps
a client that sends one request per task. ``SubmitBatcher`` batches naturally: a
submit goes out at once when fewer than ``max_in_flight`` requests are outstanding,
so a lone caller pays no delay; submits made while requests are outstanding queue
up and leave together in one ``submit_batch`` request, which the scheduler admits
concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError
from agentbus.messages import (
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
)

BATCH_MAX_BYTES = 512 * 1024
"""Largest ``submit_batch`` request a client sends (inputs counted plus 512 bytes each)."""
BATCH_MAX_TASKS = 1000

_Pending = tuple[SubmitTask, "asyncio.Future[SubmitReply]"]


def task_size(task: SubmitTask) -> int:
    """Bytes ``task`` is counted as in a batch."""
    return len(task.input) + 512


class SubmitBatcher:
    """Coalesces concurrent ``submit`` calls of one client into batch requests."""

    def __init__(self, bus: Bus, *, max_in_flight: int = 2) -> None:
        self._bus = bus
        self._max_in_flight = max_in_flight
        self._queue: list[_Pending] = []
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()

    async def submit(self, task: SubmitTask) -> SubmitReply:
        """Submit ``task`` alone or with others queued at the same time.

        Raises:
            ContractError: the scheduler rejected the task (a rejected batch is
                retried task by task, so one bad task fails only its own caller).
            ConflictError: ``require_agent`` and no live agent serves the capability
                (retried task by task as well).
            UnavailableError: no scheduler is running.
            RequestTimeoutError: the scheduler did not answer in time.
        """
        if not self._queue and self._in_flight == 0:  # a lone submit: at once, no task
            self._in_flight += 1
            try:
                (reply,) = await self._request([task])
            finally:
                self._in_flight -= 1
                self._kick()
            return reply
        future: asyncio.Future[SubmitReply] = asyncio.get_running_loop().create_future()
        self._queue.append((task, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            size, count = 0, 0
            for task, _ in self._queue:
                size += task_size(task)
                if count and (size > BATCH_MAX_BYTES or count >= BATCH_MAX_TASKS):
                    break
                count += 1
            batch, self._queue = self._queue[:count], self._queue[count:]
            self._in_flight += 1
            sender = asyncio.create_task(self._send(batch))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            try:
                replies = await self._request([task for task, _ in batch])
            except (ContractError, ConflictError):
                if len(batch) == 1:
                    raise
                for item in batch:  # find the culprit: each task on its own
                    await self._send_one(item)
                return
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    future.set_result(reply)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _send_one(self, item: _Pending) -> None:
        task, future = item
        try:
            (reply,) = await self._request([task])
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(reply)

    async def _request(self, tasks: list[SubmitTask]) -> list[SubmitReply]:
        names = self._bus.names
        if len(tasks) == 1:
            reply = await self._bus.request(
                names.endpoint("scheduler", "submit"), tasks[0], SubmitReply
            )
            return [reply]
        batch_reply = await self._bus.request(
            names.endpoint("scheduler", "submit_batch"),
            SubmitTasks(tasks=tasks),
            SubmitTasksReply,
            timeout_s=max(self._bus.settings.request_timeout_s, 30.0),
        )
        return batch_reply.results


def batches(tasks: Sequence[SubmitTask]) -> Iterable[list[SubmitTask]]:
    """``tasks`` in order, cut into batches of at most ``BATCH_MAX_BYTES`` each."""
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
