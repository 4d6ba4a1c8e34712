"""The agent runtime: register, heartbeat, pull tasks, run handlers, report, ack.

An agent declares a name and one async handler per capability::

    agent = Agent("summarizer", max_concurrency=4)

    @agent.handler("summarize")
    async def summarize(ctx: TaskContext, doc: Document) -> Summary: ...

    agent.main()   # process entry point: logging, SIGTERM, asyncio.run

For each capability the agent binds one durable pull consumer per priority band
(``cap-<capability>`` for band 0, ``cap-<capability>-p<N>`` for band N), shared by
every agent with that capability (JetStream spreads tasks among them), and pulls into
its free slots highest band first (``agentbus.fetch``). A cancel notice stops the
handler of a cancelled task (``agentbus.cancellation``). A delivered task holds a
lease (the consumer's AckWait, ``AgentSettings.lease_s``) that the runtime renews with
``in_progress()`` every lease/3 while the handler runs. The runtime reports
``TaskStarted`` (only for a handler still running after ``started_report_delay_s``:
most tasks are shorter, and their result tells the scheduler they ran) and then
``TaskResult`` on ``<p>.results.<capability>``, and acks the task only after the
result is stored, so a crash at any point leads to a redelivery, never a lost task
(the scheduler drops duplicate results). A handler exception becomes a failed result
carrying the exception type and message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import typing
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from agentbus import __version__
from agentbus.attempt import (
    AgentMetrics,
    failure_result,
    poison_reporter,
    preflight,
    run_with_timeout,
    settle,
)
from agentbus.blobs import pack, unpack
from agentbus.bus import Bus
from agentbus.cancellation import Cancellations, cancelled_result, report_cancelled
from agentbus.client import Client
from agentbus.context import TaskContext as TaskContext  # re-exported
from agentbus.errors import AgentBusError, ContractError
from agentbus.fetch import Intake
from agentbus.log import configure_logging
from agentbus.messages import (
    AgentInfo,
    Task,
    TaskResult,
    TaskStarted,
    decode_task,
    encode,
    utcnow,
)
from agentbus.names import BANDS, Names, check_token
from agentbus.retry import SAFETY_MAX_DELIVER
from agentbus.retry import error_info as error_info  # re-exported
from agentbus.service import connect_with_retry
from agentbus.settings import AgentSettings, BusSettings
from agentbus.state import AgentState, checkpointing

Handler = Callable[[TaskContext, Any], Awaitable[Any]]
RestoreHook = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    capability: str
    fn: Handler
    input_type: Any


class Agent:
    """An agent process: a name, capabilities with handlers, and the run loop.

    Settings come from ``AgentSettings`` (env ``AGENTBUS_AGENT_*``), which a supervisor
    fills for the replicas it starts; keyword arguments here are the agent's own
    defaults, overridden by those settings.
    """

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int = 1,
        settings: AgentSettings | None = None,
        bus_settings: BusSettings | None = None,
        state_type: Any = None,
    ) -> None:
        self.name = check_token("agent name", name)
        self.settings = settings or AgentSettings()
        self.bus_settings = bus_settings
        self.max_concurrency = self.settings.max_concurrency or max_concurrency
        self.agent_id = check_token(
            "agent id", self.settings.agent_id or f"{name}-{uuid.uuid4().hex[:8]}"
        )
        self._routes: dict[str, _Route] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._intake: Intake | None = None
        self._cancels: Cancellations | None = None
        self._stopping = False
        self.started_at = utcnow()
        self.registry = CollectorRegistry()
        """Prometheus registry of this agent's metrics (``AgentMetrics``)."""
        self.metrics = AgentMetrics(self.registry)
        self.durable = AgentState(self.agent_id, state_type)
        """``agent.state`` and its checkpoints (``agentbus.state``)."""
        self._restore_hooks: list[RestoreHook] = []

    # -- durable state (agentbus.state) ---------------------------------------------
    @property
    def state(self) -> Any:
        """The agent's durable state: restored at start, saved by ``save_state``."""
        return self.durable.value

    @state.setter
    def state(self, value: Any) -> None:
        self.durable.value = value

    async def save_state(self) -> None:
        """Checkpoint ``state`` now if it changed since the last save."""
        await self.durable.save()

    def on_restore(self, fn: RestoreHook) -> RestoreHook:
        """Register ``async def fn(state)``, run after the restore, before any task."""
        self._restore_hooks.append(fn)
        return fn

    # -- declaration ----------------------------------------------------------------
    def handler(self, capability: str) -> Callable[[Handler], Handler]:
        """Register the decorated ``async def fn(ctx, input) -> output`` for ``capability``.

        The input is decoded as the annotation of the handler's second parameter (a
        msgspec Struct, a builtin type, or ``Any`` for plain JSON); the return value is
        encoded with msgspec.

        Raises:
            ContractError: ``capability`` is not a valid token or already has a handler.
        """
        check_token("capability", capability)
        if capability in self._routes:
            raise ContractError(f"capability {capability!r} already has a handler")

        def register(fn: Handler) -> Handler:
            hints = typing.get_type_hints(fn)
            params = [p for p in fn.__code__.co_varnames[: fn.__code__.co_argcount]]
            input_type = hints.get(params[1], Any) if len(params) > 1 else Any
            self._routes[capability] = _Route(capability, fn, input_type)
            return fn

        return register

    @property
    def capabilities(self) -> list[str]:
        """Capabilities served: ``AGENTBUS_AGENT_CAPABILITIES`` if set, else all handlers."""
        if self.settings.capabilities:
            return [c.strip() for c in self.settings.capabilities.split(",") if c.strip()]
        return sorted(self._routes)

    # -- running --------------------------------------------------------------------
    def main(self) -> None:
        """Process entry point: configure logging, run until SIGTERM/SIGINT."""
        bus_settings = self.bus_settings or BusSettings()
        configure_logging(self.agent_id, level=bus_settings.log_level, json=bus_settings.log_json)

        async def _main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            bus = await connect_with_retry(bus_settings, name=f"agentbus-agent-{self.agent_id}")
            try:
                await self.run(bus, stop)
            finally:
                await bus.close()

        asyncio.run(_main())

    async def run(self, bus: Bus, stop: asyncio.Event) -> None:
        """Serve tasks on ``bus`` until ``stop`` is set, then stop gracefully.

        On stop the agent stops fetching, lets in-flight tasks finish for up to
        ``stop_grace_s`` seconds, returns (naks) the rest, and leaves the registry.

        Raises:
            ContractError: a served capability has no handler.
        """
        started = time.perf_counter()
        missing = [c for c in self.capabilities if c not in self._routes]
        if missing:
            raise ContractError(f"agent {self.name!r} has no handler for {missing}")
        if self.durable.enabled or self._restore_hooks:
            await self.durable.restore(bus, started=started)
            for hook in self._restore_hooks:
                await hook(self.durable.value)
        client = Client(bus)
        for cap in self.capabilities:  # band 0 first: the consumer a minimal agent uses
            await self._bind(bus, cap)
        await asyncio.gather(
            *(self._bind(bus, cap, band) for cap in self.capabilities for band in range(1, BANDS))
        )
        cancels = self._cancels = Cancellations(bus, on_bad=self._poison(bus, "control"))
        await cancels.start()
        intake = self._intake = Intake(
            bus,
            self.capabilities,
            max_concurrency=self.max_concurrency,
            rescan_s=self.settings.rescan_s,
            pull_timeout_s=self.settings.fetch_timeout_s,
            dispatch=lambda capability, msg: self._dispatch(bus, client, capability, msg),
            on_bad=self._poison(bus, "ready"),
        )
        await intake.start()
        leaving = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(bus, leaving))
        loops = [asyncio.create_task(intake.run())]
        if self.settings.checkpoint_interval_s and self.durable.enabled:
            saves = self.durable.run_periodic(self.settings.checkpoint_interval_s, leaving)
            loops.append(asyncio.create_task(saves))
        logger.info("agent started", agent_id=self.agent_id, capabilities=self.capabilities)
        try:
            await stop.wait()
        finally:  # also when run() itself is cancelled: never leave tasks behind
            self._stopping = True
            intake.stop()
            logger.info("agent stopping", in_flight=len(self._in_flight))
            await asyncio.gather(*loops, return_exceptions=True)
            if self._in_flight:
                _, late = await asyncio.wait(self._in_flight, timeout=self.settings.stop_grace_s)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            leaving.set()
            if self.durable.enabled:
                await self.durable.save_quietly()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await intake.close()
            await cancels.close()
            try:
                kv = await bus.kv(bus.names.agents_bucket)
                await kv.delete(self.agent_id)
            except Exception as exc:
                logger.warning("could not leave the registry", error=repr(exc))
            logger.info("agent stopped")

    async def _bind(self, bus: Bus, capability: str, band: int = 0) -> None:
        names = bus.names
        durable = Names.task_consumer(capability, band)
        await bus.js.add_consumer(
            names.tasks_stream,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                filter_subject=names.task_subject(capability, band),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.lease_s,
                max_ack_pending=-1,
                max_deliver=SAFETY_MAX_DELIVER,
            ),
        )

    def _info(self) -> AgentInfo:
        busy = len(self._in_flight) >= self.max_concurrency
        return AgentInfo(
            agent_id=self.agent_id,
            name=self.name,
            capabilities=self.capabilities,
            started_at=self.started_at,
            heartbeat_at=utcnow(),
            status="stopping" if self._stopping else ("busy" if busy else "ready"),
            in_flight=len(self._in_flight),
            max_concurrency=self.max_concurrency,
            node_id=self.settings.node_id,
            deployment=self.settings.deployment,
            replica=self.settings.replica,
            pid=os.getpid(),
            hostname=socket.gethostname(),
            version=__version__,
        )

    async def _heartbeat(self, bus: Bus, leaving: asyncio.Event) -> None:
        # Ends on ``leaving``, not by cancellation: nats-py may turn a cancellation
        # inside ``kv.put`` into a TimeoutError, which this loop must survive.
        kv = await bus.kv(bus.names.agents_bucket)
        while not leaving.is_set():
            try:
                await kv.put(self.agent_id, encode(self._info()))
            except Exception as exc:
                logger.warning("heartbeat failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leaving.wait(), self.settings.heartbeat_s)

    def _dispatch(self, bus: Bus, client: Client, capability: str, msg: Msg) -> None:
        t = asyncio.create_task(self._handle(bus, client, capability, msg))
        self._in_flight.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[None]) -> None:
        self._in_flight.discard(t)
        if self._cancels is not None:
            self._cancels.release(t)
        if self._intake is not None:
            self._intake.release()

    async def _while_long(
        self, bus: Bus, msg: Msg, subject: str, started: TaskStarted | None, done: asyncio.Event
    ) -> None:
        """For an attempt still running after the start delay: report it, renew its lease.

        Ends on ``done`` (set when the attempt ends), for the reason given in _heartbeat.
        """
        try:
            if started is not None:
                await bus.js.publish(subject, encode(started))
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

    async def _handle(self, bus: Bus, client: Client, capability: str, msg: Msg) -> None:
        try:
            task = decode_task(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(bus, msg, f"task does not decode: {exc}")
            return
        if task.capability != capability:
            reason = f"task {task.task_id!r} for {task.capability!r} on the {capability!r} queue"
            await self._reject(bus, msg, reason)
            return
        me = asyncio.current_task()
        if self._cancels is not None and me is not None:
            if not self._cancels.claim(task.task_id, me):
                logger.info("cancelled task terminated unstarted", task_id=task.task_id)
                await msg.term()
                return
        attempt = msg.metadata.num_delivered or 1
        started_at = utcnow()
        subject = bus.names.result_subject(capability)
        if (early := preflight(task, attempt, agent_id=self.agent_id, now=started_at)) is not None:
            with logger.contextualize(task_id=task.task_id, attempt=attempt):
                await self._report(bus, msg, capability, early)
            return
        # TaskStarted and lease renewals only for an attempt that outlives the delay
        # (a timer, not a task, per attempt); the result tells of shorter ones.
        attempt_done = asyncio.Event()
        long: list[asyncio.Task[None]] = []
        started = TaskStarted(task_id=task.task_id, agent_id=self.agent_id, attempt=attempt,
                              started_at=started_at)  # fmt: skip

        def outlived(report: TaskStarted | None = started) -> None:
            long.append(asyncio.create_task(
                self._while_long(bus, msg, subject, report, attempt_done)))  # fmt: skip

        delay_s = min(self.settings.started_report_delay_s, self.settings.lease_s / 3)
        timer = asyncio.get_running_loop().call_later(delay_s, outlived)
        with logger.contextualize(task_id=task.task_id, attempt=attempt):
            try:
                if delay_s == 0:  # always reported, before the handler starts
                    timer.cancel()
                    await bus.js.publish(subject, encode(started))
                    outlived(None)
                result = await self._run_handler(bus, client, task, attempt, started_at)
                timer.cancel()
                publisher = await bus.publisher()
                await (await publisher.publish(subject, encode(result)))
                await settle(msg, result)
                self.metrics.count(capability, result)
                if result.retry_in_s is not None and self._intake is not None:
                    # nobody announces the redelivery: look again when it is due
                    self._intake.wake_later(capability, task.priority, result.retry_in_s)
            except asyncio.CancelledError:
                timer.cancel()
                if self._cancels is not None and self._cancels.swallow(task.task_id):
                    logger.info("running task cancelled")
                    result = cancelled_result(task.task_id, agent_id=self.agent_id,
                                              attempt=attempt, started_at=started_at)  # fmt: skip
                    await report_cancelled(bus, msg, capability, result)
                    return
                self.metrics.attempts.labels(capability, "returned").inc()
                await msg.nak()  # stopping: let another agent take it now
                raise
            except Exception as exc:  # bus trouble: no ack, the lease lapses, redelivery
                logger.warning("could not report result", error=repr(exc))
            finally:
                timer.cancel()
                if long:
                    attempt_done.set()
                    await asyncio.gather(*long, return_exceptions=True)

    async def _run_handler(
        self, bus: Bus, client: Client, task: Task, attempt: int, started_at: Any
    ) -> TaskResult:
        route = self._routes[task.capability]
        ctx = TaskContext(task=task, attempt=attempt, agent_id=self.agent_id, bus=bus,
                          client=client)  # fmt: skip
        common = {"task_id": task.task_id, "agent_id": self.agent_id, "attempt": attempt,
                  "started_at": started_at}  # fmt: skip
        try:
            value = await unpack(bus, task.input, task.input_ref, route.input_type)
            async with checkpointing(ctx.checkpoint, self.settings.checkpoint_interval_s):
                output = await run_with_timeout(route.fn(ctx, value), task.timeout_s)
            raw, ref = await pack(bus, output, name=f"tasks/{task.task_id}/output")
        except Exception as exc:
            if not isinstance(exc, AgentBusError):
                logger.opt(exception=exc).info("handler failed")
            return failure_result(task, attempt, exc, agent_id=self.agent_id,
                                  started_at=started_at)  # fmt: skip
        return TaskResult(status="succeeded", finished_at=utcnow(), output=raw, output_ref=ref,
                          ran=True, **common)  # fmt: skip

    async def _report(self, bus: Bus, msg: Msg, capability: str, result: TaskResult) -> None:
        """Publish ``result`` for a task ended before it started, then settle its message."""
        try:
            await bus.js.publish(bus.names.result_subject(capability), encode(result))
            await settle(msg, result)
        except Exception as exc:  # no settle: the task comes back and is checked again
            logger.warning("could not report result", error=repr(exc))
            return
        self.metrics.count(capability, result)

    def _poison(self, bus: Bus, source: str) -> Callable[[str, str], Awaitable[None]]:
        return poison_reporter(bus, self.metrics, agent_id=self.agent_id, source=source)

    async def _reject(self, bus: Bus, msg: Msg, reason: str) -> None:
        await msg.term()
        await self._poison(bus, "tasks")(msg.subject, reason)
