"""The agent side of cancellation: hear ``CancelNotice``s, stop the handlers concerned.

The scheduler marks a cancelled task's record ``cancelled`` first (so any later
result is a dropped duplicate), deletes the task's message from the work stream, then
publishes one ``CancelNotice`` on ``<p>.control.cancel``. Every agent hears it:

* a task being handled here has its attempt cancelled (``asyncio.Task.cancel``): the
  handler sees ``CancelledError`` at its next ``await`` (within a second for any
  handler that awaits), the runtime reports ``TaskResult{status: "cancelled"}`` and
  terminates the message;
* the id is remembered (the last ``remember`` ids), so a delivery of the task that
  raced the notice is terminated without starting.

Registration (``claim``) and the notice callback both run on the event loop without
an ``await`` in between, so a task is either claimed before the notice (and then
cancelled by it) or refused by ``claim`` after it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.bus import Bus
from agentbus.messages import CancelNotice, ErrorInfo, TaskResult, encode, utcnow

_decode_notice = msgspec.json.Decoder(CancelNotice).decode
CANCEL_MESSAGE = "agentbus: task cancelled"
"""The message of the ``CancelledError`` a cancelled handler sees."""


class Cancellations:
    """Cancel notices heard by one agent, and the attempts it is running."""

    def __init__(
        self,
        bus: Bus,
        *,
        remember: int = 10_000,
        on_bad: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._bus = bus
        self._on_bad = on_bad  # (subject, reason) of a notice that does not decode
        self._remember = remember
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._ids: dict[asyncio.Task[None], str] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to ``<p>.control.cancel``; idempotent."""
        if self._sub is None:
            self._sub = await self._bus.nc.subscribe(
                self._bus.names.cancel_subject(), cb=self._on_notice
            )

    async def close(self) -> None:
        """Unsubscribe."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:
                logger.debug("unsubscribe failed", error=repr(exc))

    def claim(self, task_id: str, attempt: asyncio.Task[None]) -> bool:
        """Register ``attempt`` as running ``task_id``; False if the task was cancelled."""
        if task_id in self._cancelled:
            return False
        self._running[task_id] = attempt
        self._ids[attempt] = task_id
        return True

    def release(self, attempt: asyncio.Task[None]) -> None:
        """``attempt`` has ended: forget what it ran."""
        task_id = self._ids.pop(attempt, None)
        if task_id is not None and self._running.get(task_id) is attempt:
            del self._running[task_id]

    def swallow(self, task_id: str) -> bool:
        """In an attempt's ``except CancelledError``: True if a cancel notice caused it.

        The attempt is then un-cancelled (``Task.uncancel``), so it can report the
        cancellation; False means the agent itself is stopping: re-raise.
        """
        if task_id not in self._cancelled:
            return False
        me = asyncio.current_task()
        if me is not None:
            me.uncancel()
        return True

    def requested(self, task_id: str) -> bool:
        """Whether a cancel notice named ``task_id``."""
        return task_id in self._cancelled

    def cancel(self, task_ids: list[str]) -> int:
        """Remember ``task_ids`` as cancelled and cancel those running; how many ran."""
        hit = 0
        for task_id in task_ids:
            self._cancelled[task_id] = None
            self._cancelled.move_to_end(task_id)
            if (attempt := self._running.get(task_id)) is not None and not attempt.done():
                attempt.cancel(CANCEL_MESSAGE)
                hit += 1
        while len(self._cancelled) > self._remember:
            self._cancelled.popitem(last=False)
        return hit

    async def _on_notice(self, msg: Msg) -> None:
        try:
            notice = _decode_notice(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("bad cancel notice ignored", subject=msg.subject)
            if self._on_bad is not None:
                await self._on_bad(msg.subject, f"not a CancelNotice: {exc}")
            return
        if hit := self.cancel(notice.task_ids):
            logger.info("running tasks cancelled", count=hit)


async def report_cancelled(bus: Bus, msg: Msg, capability: str, result: TaskResult) -> None:
    """Publish the ``cancelled`` result of an attempt, then terminate its message.

    The record is already ``cancelled`` (the scheduler drops this result as a
    duplicate); the report keeps every attempt accounted for in the results stream.
    """
    try:
        subject = bus.names.result_subject(capability, result.agent_id)
        await bus.js.publish(subject, encode(result))
        await msg.term()
    except Exception as exc:  # the scheduler deleted the message: nothing comes back
        logger.warning("could not report cancellation", error=repr(exc))


def cancelled_result(
    task_id: str, *, agent_id: str, attempt: int, started_at: datetime
) -> TaskResult:
    """The report of an attempt stopped by a cancel notice."""
    return TaskResult(
        task_id=task_id,
        agent_id=agent_id,
        attempt=attempt,
        status="cancelled",
        started_at=started_at,
        finished_at=utcnow(),
        error=ErrorInfo(error_type="TaskCancelled", message="cancelled while running"),
    )
