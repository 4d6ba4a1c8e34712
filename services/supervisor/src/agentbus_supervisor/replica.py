"""One supervised replica: start it, watch it, restart it by policy, ship its logs.

A ``ReplicaRunner`` owns one replica from placement to removal. Its loop starts the
replica (or adopts a container left running by an earlier supervisor) and watches
it until it ends: by itself (``exit``), by the kernel's OOM killer (``oom``), or
killed by the supervisor because its health check failed (``unhealthy``) or its
agent stopped heartbeating (``heartbeat``); see ``health``. ``restart_policy``
decides whether and when it starts again (policy, exponential backoff with jitter,
crash-loop window). Every transition is a ``ReplicaEvent`` on
``<p>.events.replica.<kind>`` with the cause in ``reason`` and the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import AgentBusError, ContractError
from agentbus.kv.mirror import KvMirror
from agentbus.messages import (
    AgentInfo,
    Deployment,
    ReplicaEvent,
    ReplicaState,
    ReplicaStatus,
    utcnow,
)
from agentbus.retry import backoff_s
from agentbus_supervisor.credentials import ReplicaCredentials
from agentbus_supervisor.health import watchdog
from agentbus_supervisor.logs import ship_logs
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.restart_policy import Cause, RestartTracker
from agentbus_supervisor.runtime import (
    ExitInfo,
    ImagePullError,
    ReplicaHandle,
    ReplicaSpec,
    Runtime,
    Usage,
)
from agentbus_supervisor.start_gate import Slot, StartGate
from agentbus_supervisor.warm_pool import WarmPool

_LOG_DRAIN_S = 2.0
"""After an exit, how long the log shipper may take to send the last lines."""
_WAIT_RETRY_S = 1.0
_KILL_RETRY_S = 5.0
_CANCEL_RETRY_S = 1.0
EventKind = Literal["started", "exited", "restarting", "crash-loop", "stopped", "failed", "pulling"]


@dataclass(frozen=True)
class RunnerContext:
    """What every runner of one supervisor shares.

    Attributes:
        agents: the mirror of KV ``<p>_agents`` (heartbeat checks, start gate); None
            disables both.
        gate: how many replicas of this node may be starting at once.
    """

    bus: Bus
    runtime: Runtime
    node_id: str
    metrics: SupervisorMetrics
    agents: KvMirror[AgentInfo] | None = None
    log_line_max_bytes: int = 8192
    gate: StartGate = field(default_factory=StartGate)
    credentials: ReplicaCredentials | None = None
    """Mints each start's credentials and revokes them at the end; None: no auth."""
    pool: WarmPool | None = None
    """Warm spares a start claims before it starts an instance cold."""


class ReplicaRunner:
    """Supervises one replica; ``start()`` launches its loop, ``stop()`` removes it.

    Attributes:
        spec: what the replica runs.
        deployment: the current deployment spec (restart policy, backoff, checks).
        handle: the runtime's handle of the current (or last) instance.
        restarts: restarts done by the restart policy so far.
    """

    def __init__(
        self,
        ctx: RunnerContext,
        spec: ReplicaSpec,
        deployment: Deployment,
        *,
        adopted: ReplicaHandle | None = None,
    ) -> None:
        self.ctx = ctx
        self.spec = spec
        self.deployment = deployment
        self.handle: ReplicaHandle | None = adopted
        self.restarts = 0
        self.tracker = RestartTracker()
        self.state: ReplicaState = "starting"
        self.exit_code: int | None = None
        self.backoff_s: float | None = None
        self.reason = ""
        self.started_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[ReplicaHandle] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._slot: Slot | None = None
        self._slot_task: asyncio.Task[bool] | None = None

    def status(self, usage: Usage | None = None) -> ReplicaStatus:
        """The replica as the ``status`` endpoint reports it, with ``usage`` if running."""
        if self.state != "running":
            usage = None
        return ReplicaStatus(
            deployment=self.spec.deployment,
            replica=self.spec.replica,
            agent_id=self.spec.agent_id,
            state=self.state,
            runtime_id=self.handle.runtime_id if self.handle else "",
            restarts=self.restarts,
            exit_code=self.exit_code,
            backoff_s=self.backoff_s,
            started_at=self.started_at,
            reason=self.reason,
            cpu_cores=usage.cpu_cores if usage else None,
            memory_bytes=usage.memory_bytes if usage else None,
        )

    def start(self) -> None:
        """Launch the supervision loop as a task."""
        self._task = asyncio.create_task(self._run(), name=f"replica-{self.spec.agent_id}")

    async def stop(self, grace_s: float | None = None, *, reason: str = "unplaced") -> None:
        """Stop supervising, then stop the replica gracefully.

        SIGTERM, then SIGKILL after ``grace_s`` seconds (default: the deployment's
        ``stop_grace_s``). An agentbus agent uses that time to finish its tasks or
        return them to the queue and leave the registry (``runtime.agent_stop_grace_s``).
        """
        self.state = "stopping"
        grace_s = self.deployment.stop_grace_s if grace_s is None else grace_s
        await self._end_loop()
        self._drop_slot()
        if (starting := self._starting) is not None:  # stopped while starting
            self._starting = None
            with contextlib.suppress(Exception):
                self.handle = await starting
        if self.handle is not None:
            try:
                await self.ctx.runtime.stop(self.handle, grace_s)
            except AgentBusError as exc:
                logger.warning("replica stop failed", agent_id=self.spec.agent_id, error=str(exc))
        await self._stop_logs(0.5)
        if self.ctx.credentials is not None:
            await self.ctx.credentials.release(self.spec.agent_id)
        if self.handle is not None and self.ctx.pool is not None:
            self.ctx.pool.forget(self.handle.spare_id)
        self.reason = reason
        await self._event("stopped", reason=reason)

    async def detach(self) -> None:
        """Stop supervising but leave the replica running (to be adopted later)."""
        await self._end_loop()
        self._drop_slot()
        await self._stop_logs(0.0)

    async def _end_loop(self) -> None:
        """Cancel the supervision loop and wait until it has ended.

        The cancellation is repeated every ``_CANCEL_RETRY_S``: nats-py can turn a
        cancellation that lands inside a request into a ``TimeoutError``, which a
        best-effort publish (``_event``) would swallow and the loop carry on. Seen as a
        supervisor whose shutdown hung on a replica stopped while it was starting.
        """
        task = self._task
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_RETRY_S)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("replica loop failed", agent_id=self.spec.agent_id, error=repr(exc))

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        handle = self.handle
        if handle is None and (failure := self.spec.secrets_failure) is not None:
            await self._refuse(*failure)
            return  # stays failed: a new spec (apply again, key fixed) gets a new runner
        if handle is not None:
            self._running(handle)
            self.ctx.metrics.starts.labels("adopted").inc()
            await self._event("started", reason="adopted")
        while True:
            if handle is None:
                handle = await self._start_until_up()
            cause, info, uptime_s, detail = await self._watch(handle)
            self.state, self.exit_code, self.reason = "exited", info.exit_code, detail
            self.ctx.metrics.exits.labels(cause).inc()
            await self._stop_logs(_LOG_DRAIN_S)
            logger.info("replica ended", agent_id=self.spec.agent_id, cause=cause, detail=detail)
            await self._event("exited", exit_code=info.exit_code, reason=cause, detail=detail)
            decision = self.tracker.decide(
                self.deployment,
                cause=cause,
                exit_code=info.exit_code,
                uptime_s=uptime_s,
                now=time.monotonic(),
            )
            if not decision.restart:
                return  # stays exited until unplaced; ``stop`` removes it
            self.restarts += 1
            self.ctx.metrics.restarts.labels(cause).inc()
            if decision.entered_crash_loop:
                self.ctx.metrics.crash_loops.inc()
                logger.warning("replica in crash loop", agent_id=self.spec.agent_id)
                await self._event(
                    "crash-loop", exit_code=info.exit_code, reason=cause, detail=detail
                )
            self.state = "crash-loop" if decision.crash_loop else "backoff"
            self.backoff_s = decision.delay_s
            await self._event(
                "restarting",
                exit_code=info.exit_code,
                reason=cause,
                detail=f"{detail}; restart in {decision.delay_s:.2f} s",
            )
            await asyncio.sleep(decision.delay_s)
            try:
                await self.ctx.runtime.stop(handle, 0)  # forget / remove the ended instance
            except AgentBusError as exc:
                logger.warning(
                    "ended replica not removed", agent_id=handle.agent_id, error=str(exc)
                )
            else:
                if self.ctx.pool is not None:
                    self.ctx.pool.forget(handle.spare_id)
            handle = self.handle = None

    async def _start_until_up(self) -> ReplicaHandle:
        """Start an instance, retrying failed starts (slowly for a spec that cannot run)."""
        failures = 0
        while True:
            self.state = "starting"
            try:
                await self.ctx.runtime.prepare(self.spec, self._pulling)
                self.state = "starting"
                handle = await self._start_once()
            except ImagePullError as exc:
                failures += 1
                delay_s = backoff_s(self.deployment.backoff, failures)
                self.state, self.reason, self.backoff_s = "image-pull-failed", str(exc), delay_s
                self.ctx.metrics.starts.labels("failed").inc()
                logger.warning("image pull failed", agent_id=self.spec.agent_id, error=str(exc))
                await self._event("failed", reason="image-pull-failed", detail=str(exc))
                await asyncio.sleep(delay_s)
                continue
            except ContractError as exc:
                self.state, self.reason = "failed", str(exc)
                self.ctx.metrics.starts.labels("failed").inc()
                logger.error("replica cannot start", agent_id=self.spec.agent_id, error=str(exc))
                await self._event("failed", reason="bad-spec", detail=str(exc))
                # Retry slowly: the image may yet be built or loaded on this node.
                await asyncio.sleep(self.deployment.backoff.max_s)
                continue
            except AgentBusError as exc:
                failures += 1
                delay_s = backoff_s(self.deployment.backoff, failures)
                self.state, self.reason, self.backoff_s = "backoff", str(exc), delay_s
                self.ctx.metrics.starts.labels("failed").inc()
                logger.warning("replica start failed", agent_id=self.spec.agent_id, error=str(exc))
                await self._event("failed", reason="start-failed", detail=str(exc))
                await asyncio.sleep(delay_s)
                continue
            self._running(handle)
            self.ctx.metrics.starts.labels("spare" if handle.spare_id else "started").inc()
            detail = f"warm spare {handle.spare_id}" if handle.spare_id else ""
            reason = "restarted" if self.restarts else "placed"
            await self._event("started", reason=reason, detail=detail)
            return handle

    async def _refuse(self, cause: str, message: str) -> None:
        """Do not start: a secret of the deployment does not open on this node."""
        self.state, self.reason = "failed", message
        self.ctx.metrics.starts.labels("failed").inc()
        self.ctx.metrics.secret_failures.labels(cause).inc()
        logger.error(
            "replica not started: secret does not open",
            agent_id=self.spec.agent_id,
            cause=cause,
            error=message,
        )
        await self._event("failed", reason=f"secret-{cause}", detail=message)

    async def _pulling(self, line: str) -> None:
        self.state, self.reason = "pulling", line
        await self._event("pulling", detail=line)

    async def _start_once(self) -> ReplicaHandle:
        self._drop_slot()
        pool = self.ctx.pool
        if pool is not None:  # a warm spare needs no slot: it started long ago
            claimed = await pool.claim(self.deployment, self.spec, self.ctx.credentials)
            if claimed is not None:
                return claimed
        self._slot = slot = await self.ctx.gate.acquire()
        issued_at = utcnow()
        try:
            if self.ctx.credentials is not None:
                await self.ctx.credentials.issue(self.deployment, self.spec.agent_id)
            # Shielded: a stop() during start still learns the handle and stops it.
            self._starting = starting = asyncio.ensure_future(self.ctx.runtime.start(self.spec))
            handle = await asyncio.shield(starting)
        except BaseException:
            self._drop_slot()
            raise
        self._starting = None
        agents = self.ctx.agents
        if agents is None or self.spec.agent_id not in agents.values:
            # Not known to register (a first start, or not an agentbus agent): the
            # slot covered the engine call only.
            self._drop_slot()
            return handle

        def lookup() -> AgentInfo | None:
            return agents.values.get(self.spec.agent_id)

        def ended() -> bool:
            return self.state not in ("starting", "running")

        # Keep the slot until the new agent registered (see ``start_gate``).
        self._slot_task = task = asyncio.create_task(
            self.ctx.gate.until_up(issued_at, lookup, ended)
        )
        task.add_done_callback(lambda _: slot.release())
        return handle

    def _drop_slot(self) -> None:
        """Give back the start slot (if held) and stop waiting for the registration."""
        if self._slot_task is not None:
            self._slot_task.cancel()
            self._slot_task = None
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def _running(self, handle: ReplicaHandle) -> None:
        self.handle = handle
        self.state, self.backoff_s, self.exit_code, self.reason = "running", None, None, ""
        self.started_at = handle.started_at or utcnow()
        self._log_task = asyncio.create_task(
            ship_logs(
                self.ctx.bus,
                self.ctx.runtime,
                handle,
                node_id=self.ctx.node_id,
                metrics=self.ctx.metrics,
                line_max_bytes=self.ctx.log_line_max_bytes,
            )
        )

    async def _watch(self, handle: ReplicaHandle) -> tuple[Cause, ExitInfo, float, str]:
        """Until the instance ends: (cause, exit info, uptime in s, one-line detail)."""
        began = time.monotonic()
        waiter = asyncio.create_task(self._wait(handle))
        dog = asyncio.create_task(
            watchdog(
                self.ctx.runtime,
                handle,
                lambda: self.deployment,
                agents=self.ctx.agents,
                node_id=self.ctx.node_id,
                metrics=self.ctx.metrics,
                is_connected=lambda: self.ctx.bus.nc.is_connected,
            )
        )
        try:
            await asyncio.wait({waiter, dog}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                info = waiter.result()
                cause: Cause = "oom" if info.oom_killed else "exit"
                return cause, info, time.monotonic() - began, info.reason
            cause, detail = dog.result()
            logger.warning("killing replica", agent_id=handle.agent_id, cause=cause, detail=detail)
            while not waiter.done():
                try:
                    await self.ctx.runtime.kill(handle)
                except AgentBusError as exc:
                    logger.warning("kill failed", agent_id=handle.agent_id, error=str(exc))
                await asyncio.wait({waiter}, timeout=_KILL_RETRY_S)
            info = waiter.result()
            return cause, info, time.monotonic() - began, f"{detail} ({info.reason})"
        finally:
            for task in (waiter, dog):
                task.cancel()
            await asyncio.gather(waiter, dog, return_exceptions=True)

    async def _wait(self, handle: ReplicaHandle) -> ExitInfo:
        while True:
            try:
                return await self.ctx.runtime.wait(handle)
            except AgentBusError as exc:
                logger.warning("replica wait failed", agent_id=handle.agent_id, error=str(exc))
                await asyncio.sleep(_WAIT_RETRY_S)

    # -- events and logs ------------------------------------------------------------------
    async def _event(
        self, kind: EventKind, *, exit_code: int | None = None, reason: str = "", detail: str = ""
    ) -> None:
        event = ReplicaEvent(
            node_id=self.ctx.node_id,
            deployment=self.spec.deployment,
            replica=self.spec.replica,
            kind=kind,
            at=utcnow(),
            agent_id=self.spec.agent_id,
            exit_code=exit_code,
            restarts=self.restarts,
            reason=reason,
            detail=detail,
        )
        try:
            await self.ctx.bus.publish_event("replica", kind, event)
        except Exception as exc:  # best effort: an outage must not stop supervision
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # nats-py turned our cancel into this
            logger.warning("replica event not published", kind=kind, error=repr(exc))

    async def _stop_logs(self, drain_s: float) -> None:
        task = self._log_task
        if task is None:
            return
        try:
            await asyncio.wait({task}, timeout=drain_s)
        finally:
            if not task.done():
                task.cancel()
            self._log_task = None
