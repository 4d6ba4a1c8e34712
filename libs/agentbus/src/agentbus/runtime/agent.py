"""The agent runtime: register, heartbeat, pull tasks, run handlers, report, ack.

An agent declares a name and one async handler per capability::

    agent = Agent("summarizer", max_concurrency=4)

    @agent.handler("summarize")
    async def summarize(ctx: TaskContext, doc: Document) -> Summary: ...

    agent.main()   # process entry point: logging, SIGTERM, asyncio.run

For each capability the agent binds one durable pull consumer per priority band
(``cap-<capability>`` for band 0, ``cap-<capability>-p<N>`` for band N), shared by every agent
with that capability (JetStream spreads tasks among them), and pulls into its free slots highest
band first (``agentbus.runtime.intake``). Consumers deleted under the running agent (or with the
whole task stream) are bound again (``agentbus.runtime.rebind``). A cancel notice stops the
handler of a cancelled task (``agentbus.runtime.cancellation``). A delivered task holds a lease
(the consumer's AckWait, ``AgentSettings.lease_s``) that the runtime renews with
``in_progress()`` every lease/3 while the handler runs. The runtime reports ``TaskStarted``
(only for a handler still running after ``started_report_delay_s``: most tasks are shorter, and
their result tells the scheduler they ran) and then ``TaskResult`` on
``<p>.results.<capability>.<agent_id>``, and acks the task only after the result is stored, so a
crash at any point leads to a redelivery, never a lost task (the scheduler drops duplicate
results). A handler exception becomes a failed result carrying the exception type and message.

This module holds the agent's declaration and lifecycle (start, heartbeat, stop);
one delivered task's path to its ack is ``agentbus.runtime.delivery``, handler shapes are
``agentbus.runtime.routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger
from nats.aio.msg import Msg

from agentbus import __version__
from agentbus.bus import Bus
from agentbus.bus.consumers import ensure_consumer
from agentbus.client import Client
from agentbus.errors import ContractError
from agentbus.events.handlers import EventHandlers
from agentbus.log import configure_logging
from agentbus.messages import AgentInfo, encode, utcnow
from agentbus.messaging.context import AskHandler, MessageHandler
from agentbus.messaging.declared import AgentMail
from agentbus.names import BANDS, check_token
from agentbus.retry import error_info as error_info  # re-exported
from agentbus.runtime.attempt import AgentMetrics, poison_reporter
from agentbus.runtime.cancellation import Cancellations
from agentbus.runtime.context import TaskContext as TaskContext  # re-exported
from agentbus.runtime.delivery import Deliveries, task_consumer_config
from agentbus.runtime.intake import Intake
from agentbus.runtime.rebind import Rebinder
from agentbus.runtime.routes import Handler as Handler  # re-exported
from agentbus.runtime.routes import RestoreHook as RestoreHook  # re-exported
from agentbus.runtime.routes import Route, route
from agentbus.runtime.spare import take_identity
from agentbus.service import connect_with_retry
from agentbus.settings import AgentSettings, BusSettings
from agentbus.state import AgentState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Agent(EventHandlers):
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
        super().__init__()  # EventHandlers: @agent.on_event (agentbus.events)
        self.name = check_token("agent name", name)
        self.settings = settings or AgentSettings()
        self.bus_settings = bus_settings
        self.max_concurrency = self.settings.max_concurrency or max_concurrency
        self.agent_id = check_token(
            "agent id", self.settings.agent_id or f"{name}-{uuid.uuid4().hex[:8]}"
        )
        self._routes: dict[str, Route] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._intake: Intake | None = None
        self._deliveries: Deliveries | None = None
        self._cancels: Cancellations | None = None
        self._stopping = False
        self.started_at = utcnow()
        self.metrics = AgentMetrics()
        self.durable = AgentState(self.agent_id, state_type)
        """``agent.state`` and its checkpoints (``agentbus.state``)."""
        self._restore_hooks: list[RestoreHook] = []
        self.mail = AgentMail()
        """Message and ask handlers (``agentbus.messaging``)."""

    @property
    def registry(self) -> CollectorRegistry:
        """Prometheus registry of this agent's metrics (``AgentMetrics``)."""
        return self.metrics.registry

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
            self._routes[capability] = route(capability, fn)
            return fn

        return register

    def on_message(self, fn: MessageHandler) -> MessageHandler:
        """Register ``async def fn(ctx: MessageContext, payload)`` for messages.

        It gets direct messages (``send``) to this agent and broadcasts to its
        capabilities (``ctx.kind``). The payload is decoded as the annotation of
        ``fn``'s second parameter.

        Raises:
            ContractError: a message handler is already registered.
        """
        return self.mail.on_message(fn)

    def on_ask(self, capability: str) -> Callable[[AskHandler], AskHandler]:
        """Register ``async def fn(ctx: MessageContext, payload) -> reply`` for ``ask``.

        One agent of those with a handler for ``capability`` answers each ask.

        Raises:
            ContractError: ``capability`` is not a valid token or already has a handler.
        """
        return self.mail.on_ask(capability)

    @property
    def capabilities(self) -> list[str]:
        """Capabilities served: ``AGENTBUS_AGENT_CAPABILITIES`` if set, else all handlers."""
        if self.settings.capabilities:
            return [c.strip() for c in self.settings.capabilities.split(",") if c.strip()]
        return sorted(self._routes)

    # -- running --------------------------------------------------------------------
    def main(self) -> None:
        """Process entry point: configure logging, run until SIGTERM/SIGINT.

        A warm spare (``agentbus.runtime.spare``) first waits to be named.
        """
        bus_settings = self.bus_settings or BusSettings()
        if take_identity():  # named now: as that replica, from now
            self.settings = settings = AgentSettings()
            self.agent_id = check_token("agent id", settings.agent_id or self.agent_id)
            self.durable = AgentState(self.agent_id, self.durable.state_type)
            self.started_at = utcnow()
        configure_logging(self.agent_id, level=bus_settings.log_level, json=bus_settings.log_json)

        async def _main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            name = f"agentbus-agent-{self.agent_id}"
            owner = "replica" if self.settings.deployment else "agent"  # contract.owned_parts
            bus = await connect_with_retry(bus_settings, name=name, owner=owner)
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
        await asyncio.gather(*(self._bind_bands(bus, cap, first=1) for cap in self.capabilities))
        await self.start_events(
            bus,
            self.settings,
            agent_id=self.agent_id,
            name=self.name,
            on_bad=self._poison(bus, "topics"),
            registry=lambda: self.registry,
        )
        cancels = self._cancels = Cancellations(bus, on_bad=self._poison(bus, "control"))
        await cancels.start()
        self._deliveries = Deliveries(
            bus=bus,
            client=client,
            agent_id=self.agent_id,
            settings=self.settings,
            routes=self._routes,
            metrics=self.metrics,
            cancels=cancels,
            retry_due=self._retry_due,
            returned=self._returned,
            on_bad=self._poison(bus, "tasks"),
            slots=_IntakeSlots(self),
        )
        intake = self._intake = Intake(
            bus,
            self.capabilities,
            max_concurrency=self.max_concurrency,
            rescan_s=self.settings.rescan_s,
            rescan_max_s=min(self.settings.rescan_max_s, self.settings.lease_s),
            pull_timeout_s=self.settings.fetch_timeout_s,
            dispatch=self._dispatch,
            on_bad=self._poison(bus, "ready"),
            rebinder=Rebinder(
                bus.names.tasks_stream,
                lambda cap: self._bind_bands(bus, cap),
                counted=lambda cap: self.metrics.rebinds.labels(cap).inc(),
            ),
        )
        await intake.start()
        await self.mail.start(
            bus,
            agent_id=self.agent_id,
            capabilities=self.capabilities,
            settings=self.settings,
            on_bad=lambda source: self._poison(bus, source),
            registry=self.metrics.registry,
        )
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
            await self.mail.close(self.settings.stop_grace_s)
            await asyncio.gather(*loops, return_exceptions=True)
            events_closed = self.close_events(self.settings.stop_grace_s)  # same grace, alongside
            if self._in_flight:
                _, late = await asyncio.wait(self._in_flight, timeout=self.settings.stop_grace_s)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            if events_closed is not None:
                await events_closed
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

    async def _bind_bands(self, bus: Bus, capability: str, *, first: int = 0) -> None:
        """Create the consumers of bands ``first``..9 of ``capability``, concurrently."""
        await asyncio.gather(*(self._bind(bus, capability, b) for b in range(first, BANDS)))

    async def _bind(self, bus: Bus, capability: str, band: int = 0) -> None:
        config = task_consumer_config(bus.names, capability, band, lease_s=self.settings.lease_s)
        await ensure_consumer(bus, bus.names.tasks_stream, config)

    def _info(self) -> AgentInfo:
        used = self._intake.busy if self._intake is not None else len(self._in_flight)
        busy = used >= self.max_concurrency  # tasks parked on an approval hold no slot
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

    def _dispatch(self, capability: str, msg: Msg) -> None:
        assert self._deliveries is not None  # set before the intake starts
        t = asyncio.create_task(self._deliveries.handle(capability, msg))
        self._in_flight.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[None]) -> None:
        self._in_flight.discard(t)
        if self._cancels is not None:
            self._cancels.release(t)
        if self._intake is not None:
            self._intake.release()

    def _retry_due(self, capability: str, band: int, delay_s: float) -> None:
        if self._intake is not None:
            self._intake.wake_later(capability, band, delay_s)

    def _returned(self, capability: str, band: int) -> None:
        if self._intake is not None:
            self._intake.returned(capability, band)

    def _poison(self, bus: Bus, source: str) -> Callable[[str, str], Awaitable[None]]:
        return poison_reporter(bus, self.metrics, agent_id=self.agent_id, source=source)


class _IntakeSlots:
    """The slots of ``agent``'s intake, for tasks that park (``agentbus.runtime.approvals``)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def lend(self) -> None:
        if (intake := self._agent._intake) is not None:
            intake.lend()

    async def take_back(self) -> None:
        if (intake := self._agent._intake) is not None:
            await intake.take_back()
