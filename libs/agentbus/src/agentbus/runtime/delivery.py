"""One delivered task message on the agent: from the pull to its ack, nak or term.

``Deliveries.handle(capability, msg)`` decodes the task (one that does not decode, or
names another capability, is terminated and reported as a bad message), claims it
against cancel notices, runs the checks before the start (``attempt.preflight``),
runs the handler under the task's timeout, publishes the ``TaskResult`` on
``<p>.results.<capability>.<agent_id>`` and only then settles the message (``attempt.settle``),
so a crash at any point leads to a redelivery, never a lost task.

``TaskStarted`` and lease renewals (``in_progress()`` every lease/3) are only for an
attempt still running after ``started_report_delay_s``: a timer per attempt, not a
task; most attempts are shorter and their result tells the scheduler they ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from agentbus.bus import Bus
from agentbus.bus.blobs import pack, unpack
from agentbus.client import Client
from agentbus.errors import AgentBusError
from agentbus.messages import Task, TaskResult, TaskStarted, decode_task, encode, utcnow
from agentbus.names import Names
from agentbus.retry import SAFETY_MAX_DELIVER
from agentbus.runtime.approvals import Parking, Slots
from agentbus.runtime.attempt import (
    AgentMetrics,
    failure_result,
    preflight,
    run_with_timeout,
    settle,
)
from agentbus.runtime.cancellation import Cancellations, cancelled_result, report_cancelled
from agentbus.runtime.context import TaskContext
from agentbus.runtime.routes import Route
from agentbus.settings import AgentSettings
from agentbus.state import checkpointing


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliveries:
    """Handles the task messages delivered to one agent."""

    bus: Bus
    client: Client
    """The client a handler's ``TaskContext`` submits subtasks with."""
    agent_id: str
    settings: AgentSettings
    routes: Mapping[str, Route]
    """The handler of each capability served."""
    metrics: AgentMetrics
    cancels: Cancellations
    retry_due: Callable[[str, int, float], None]
    """``(capability, band, delay_s)``: an attempt was nak'd with that delay (nobody
    announces its redelivery)."""
    returned: Callable[[str, int], None]
    """``(capability, band)``: an attempt was nak'd for another agent to take at once
    (nobody else announces it)."""
    on_bad: Callable[[str, str], Awaitable[None]]
    """``(subject, reason)``: a task message is not a valid task for its queue."""
    slots: Slots | None = None
    """The agent's slots, lent while a handler waits for an approval."""

    async def handle(self, capability: str, msg: Msg) -> None:
        """Run the task in ``msg`` (pulled from ``capability``'s queue) to its settlement.

        Raises:
            asyncio.CancelledError: the attempt was cancelled other than by a cancel
                notice (the agent is stopping); the message was nak'd first.
        """
        bus, settings = self.bus, self.settings
        try:
            task = decode_task(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(msg, f"task does not decode: {exc}")
            return
        if task.capability != capability:
            reason = f"task {task.task_id!r} for {task.capability!r} on the {capability!r} queue"
            await self._reject(msg, reason)
            return
        me = asyncio.current_task()
        if me is not None and not self.cancels.claim(task.task_id, me):
            logger.info("cancelled task terminated unstarted", task_id=task.task_id)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered or 1
        started_at = utcnow()
        subject = bus.names.result_subject(capability, self.agent_id)
        if (early := preflight(task, attempt, agent_id=self.agent_id, now=started_at)) is not None:
            with logger.contextualize(task_id=task.task_id, attempt=attempt):
                await self._report(msg, capability, early)
            return
        # TaskStarted and lease renewals only for an attempt that outlives the delay
        # (a timer, not a task, per attempt); the result tells of shorter ones.
        attempt_done = asyncio.Event()
        long: list[asyncio.Task[None]] = []
        started = TaskStarted(
            task_id=task.task_id, agent_id=self.agent_id, attempt=attempt, started_at=started_at
        )

        def outlived(report: TaskStarted | None = started) -> None:
            long.append(asyncio.create_task(self._while_long(msg, subject, report, attempt_done)))

        delay_s = min(settings.started_report_delay_s, settings.lease_s / 3)
        timer = asyncio.get_running_loop().call_later(delay_s, outlived)
        with logger.contextualize(task_id=task.task_id, attempt=attempt):
            try:
                if delay_s == 0:  # always reported, before the handler starts
                    timer.cancel()
                    await bus.js.publish(subject, encode(started))
                    outlived(None)
                result = await self._run_handler(task, attempt, started_at)
                timer.cancel()
                publisher = await bus.publisher()
                await (await publisher.publish(subject, encode(result)))
                await settle(msg, result)
                self.metrics.count(capability, result)
                if result.retry_in_s is not None:
                    # nobody announces the redelivery: look again when it is due
                    self.retry_due(capability, task.priority, result.retry_in_s)
            except asyncio.CancelledError:
                timer.cancel()
                if self.cancels.swallow(task.task_id):
                    logger.info("running task cancelled")
                    result = cancelled_result(
                        task.task_id, agent_id=self.agent_id, attempt=attempt, started_at=started_at
                    )
                    await report_cancelled(bus, msg, capability, result)
                    return
                self.metrics.attempts.labels(capability, "returned").inc()
                await msg.nak()  # stopping: let another agent take it now
                self.returned(capability, task.priority)
                raise
            except Exception as exc:  # bus trouble: no ack, the lease lapses, redelivery
                logger.warning("could not report result", error=repr(exc))
            finally:
                timer.cancel()
                if long:
                    attempt_done.set()
                    await asyncio.gather(*long, return_exceptions=True)

    async def _while_long(
        self, msg: Msg, subject: str, started: TaskStarted | None, done: asyncio.Event
    ) -> None:
        """For an attempt still running after the start delay: report it, renew its lease.

        Ends on ``done`` (set when the attempt ends), not by cancellation: nats-py may
        turn a cancellation inside a request into a TimeoutError.
        """
        try:
            if started is not None:
                await self.bus.js.publish(subject, encode(started))
        except Exception as exc:  # the result still tells the scheduler the attempt ran
            logger.warning("could not report the start", error=repr(exc))
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.settings.lease_s / 3)
            if done.is_set():
                return
            try:
                await msg.in_progress()
            except Exception as exc:
                logger.warning("lease renewal failed", error=repr(exc))

    async def _run_handler(self, task: Task, attempt: int, started_at: datetime) -> TaskResult:
        bus, agent_id = self.bus, self.agent_id
        route = self.routes[task.capability]
        parking = Parking(slots=self.slots)
        ctx = TaskContext(
            task=task,
            attempt=attempt,
            agent_id=agent_id,
            bus=bus,
            client=self.client,
            started_at=started_at,
            _parking=parking,
        )

        def keep_scope(scope: asyncio.Timeout) -> None:
            parking.scope = scope

        try:
            value = await unpack(bus, task.input, task.input_ref, route.input_type)
            async with checkpointing(ctx.checkpoint, self.settings.checkpoint_interval_s):
                output = await run_with_timeout(
                    route.fn(ctx, value), task.timeout_s, on_scope=keep_scope
                )
            raw, ref = await pack(bus, output, name=f"tasks/{task.task_id}/output")
        except Exception as exc:
            if not isinstance(exc, AgentBusError):
                logger.opt(exception=exc).info("handler failed")
            return failure_result(task, attempt, exc, agent_id=agent_id, started_at=started_at)
        return TaskResult(
            task_id=task.task_id,
            agent_id=agent_id,
            attempt=attempt,
            started_at=started_at,
            status="succeeded",
            finished_at=utcnow(),
            output=raw,
            output_ref=ref,
            ran=True,
        )

    async def _report(self, msg: Msg, capability: str, result: TaskResult) -> None:
        """Publish ``result`` for a task ended before it started, then settle its message."""
        try:
            subject = self.bus.names.result_subject(capability, result.agent_id)
            await self.bus.js.publish(subject, encode(result))
            await settle(msg, result)
        except Exception as exc:  # no settle: the task comes back and is checked again
            logger.warning("could not report result", error=repr(exc))
            return
        self.metrics.count(capability, result)

    async def _reject(self, msg: Msg, reason: str) -> None:
        await msg.term()
        await self.on_bad(msg.subject, reason)


def task_consumer_config(
    names: Names, capability: str, band: int, *, lease_s: float
) -> ConsumerConfig:
    """The durable consumer of one priority band of ``capability`` (``docs/protocol.md``).

    AckWait is the lease (seconds); ``max_deliver`` only a backstop, as the runtime
    ends a task after its ``max_attempts``. Shared by every agent with the capability,
    and what a supervisor provisions for replicas that may not create it.
    """
    durable = Names.task_consumer(capability, band)
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=names.task_subject(capability, band),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=lease_s,
        max_ack_pending=-1,
        max_deliver=SAFETY_MAX_DELIVER,
    )
