"""One supervised replica: start it, watch it exit, restart it with backoff, ship its logs.

A ``ReplicaRunner`` owns one replica from placement to removal. Its loop starts the
replica (or adopts a container left running by an earlier supervisor), waits for it
to exit, and applies the deployment's restart policy: ``always`` restarts, ``on-failure``
restarts after a non-zero exit, ``never`` leaves it exited. The n-th consecutive
restart waits ``backoff_initial_s * backoff_factor**n`` seconds (capped at
``backoff_max_s``, ±10 % jitter); a replica that ran for ``healthy_uptime_s`` before it
exited starts the sequence again at n = 0. Each transition is a ``ReplicaEvent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentbus.bus import Bus
from agentbus.errors import AgentBusError, ContractError
from agentbus.retry import backoff_s
from agentbus.messages import Deployment, ReplicaEvent, ReplicaState, ReplicaStatus, utcnow
from agentbus_supervisor.runtime import ExitInfo, ReplicaHandle, ReplicaSpec, Runtime

_LOG_DRAIN_S = 2.0
"""After an exit, how long the log shipper may take to send the last lines."""
_WAIT_RETRY_S = 1.0
EventKind = Literal["started", "exited", "restarting", "stopped", "failed"]


class SupervisorMetrics:
    """Metrics of the supervisor, on the registry given to ``serve``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "agentbus_supervisor_replicas", "Replicas this node supervises.", registry=registry
        )
        self.starts = Counter(
            "agentbus_supervisor_replica_starts_total",
            "Replica starts, by outcome (started, adopted, failed).",
            ["outcome"],
            registry=registry,
        )
        self.exits = Counter(
            "agentbus_supervisor_replica_exits_total",
            "Replica exits, by kind (ok, error, oom).",
            ["kind"],
            registry=registry,
        )
        self.restarts = Counter(
            "agentbus_supervisor_replica_restarts_total",
            "Restarts scheduled by the restart policy.",
            registry=registry,
        )
        self.log_lines = Counter(
            "agentbus_supervisor_log_lines_total",
            "Output lines shipped to the logs stream.",
            registry=registry,
        )
        self.log_errors = Counter(
            "agentbus_supervisor_log_errors_total",
            "Output lines that could not be published.",
            registry=registry,
        )


@dataclass(frozen=True)
class RunnerContext:
    """What every runner of one supervisor shares."""

    bus: Bus
    runtime: Runtime
    node_id: str
    metrics: SupervisorMetrics
    healthy_uptime_s: float = 10.0
    log_line_max_bytes: int = 8192


def backoff_delay_s(deployment: Deployment, n: int) -> float:
    """Delay before the ``n``-th consecutive restart (n = 0 for the first), seconds."""
    return backoff_s(deployment.backoff, n + 1)


class ReplicaRunner:
    """Supervises one replica; ``start()`` launches its loop, ``stop()`` removes it.

    Attributes:
        spec: what the replica runs.
        deployment: the current deployment spec (restart policy and backoff).
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
        self.state: ReplicaState = "starting"
        self.exit_code: int | None = None
        self.backoff_s: float | None = None
        self.reason = ""
        self.started_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[ReplicaHandle] | None = None
        self._log_task: asyncio.Task[None] | None = None

    def status(self) -> ReplicaStatus:
        """The replica as the ``status`` endpoint reports it."""
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
        )

    def start(self) -> None:
        """Launch the supervision loop as a task."""
        self._task = asyncio.create_task(self._run(), name=f"replica-{self.spec.agent_id}")

    async def stop(self, grace_s: float, *, reason: str = "unplaced") -> None:
        """Stop supervising, stop the replica (SIGTERM, SIGKILL after ``grace_s``)."""
        self.state = "stopping"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        self.reason = reason
        await self._event("stopped", reason=reason)

    async def detach(self) -> None:
        """Stop supervising but leave the replica running (to be adopted later)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_logs(0.0)

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        n = 0
        handle = self.handle
        if handle is not None:
            self._running(handle)
            self.ctx.metrics.starts.labels("adopted").inc()
            await self._event("started", reason="adopted")
        while True:
            if handle is None:
                self.state = "starting"
                try:
                    handle = await self._start_once()
                except ContractError as exc:
                    self.state, self.reason = "failed", str(exc)
                    self.ctx.metrics.starts.labels("failed").inc()
                    logger.error(
                        "replica cannot start", agent_id=self.spec.agent_id, error=str(exc)
                    )
                    await self._event("failed", reason=str(exc))
                    # Retry slowly: the image may yet be built or loaded on this node.
                    await asyncio.sleep(self.deployment.backoff.max_s)
                    continue
                except AgentBusError as exc:
                    self.ctx.metrics.starts.labels("failed").inc()
                    logger.warning(
                        "replica start failed", agent_id=self.spec.agent_id, error=str(exc)
                    )
                    await self._event("failed", reason=str(exc))
                    await self._backoff(n, reason=str(exc))
                    n += 1
                    continue
                self._running(handle)
                self.ctx.metrics.starts.labels("started").inc()
                await self._event("started", reason="restarted" if self.restarts else "placed")
            began = time.monotonic()
            info = await self._wait(handle)
            uptime_s = time.monotonic() - began
            self.state, self.exit_code, self.reason = "exited", info.exit_code, info.reason
            kind = "oom" if info.oom_killed else ("ok" if info.exit_code == 0 else "error")
            self.ctx.metrics.exits.labels(kind).inc()
            await self._stop_logs(_LOG_DRAIN_S)
            logger.info("replica exited", agent_id=self.spec.agent_id, reason=info.reason)
            await self._event("exited", exit_code=info.exit_code, reason=info.reason)
            policy = self.deployment.restart_policy
            if policy == "never" or (policy == "on-failure" and info.exit_code == 0):
                return  # stays exited until unplaced; ``stop`` removes it
            if uptime_s >= self.ctx.healthy_uptime_s:
                n = 0
            self.restarts += 1
            self.ctx.metrics.restarts.inc()
            await self._backoff(n, reason=info.reason, exit_code=info.exit_code)
            n += 1
            try:
                await self.ctx.runtime.stop(handle, 0)  # forget / remove the exited instance
            except AgentBusError as exc:
                logger.warning(
                    "exited replica not removed", agent_id=handle.agent_id, error=str(exc)
                )
            handle = self.handle = None

    async def _start_once(self) -> ReplicaHandle:
        # Shielded: a stop() during start still learns the handle and stops it.
        self._starting = starting = asyncio.ensure_future(self.ctx.runtime.start(self.spec))
        handle = await asyncio.shield(starting)
        self._starting = None
        return handle

    def _running(self, handle: ReplicaHandle) -> None:
        self.handle = handle
        self.state, self.backoff_s, self.exit_code = "running", None, None
        self.started_at = handle.started_at or utcnow()
        self._log_task = asyncio.create_task(self._ship_logs(handle))

    async def _wait(self, handle: ReplicaHandle) -> ExitInfo:
        while True:
            try:
                return await self.ctx.runtime.wait(handle)
            except AgentBusError as exc:
                logger.warning("replica wait failed", agent_id=handle.agent_id, error=str(exc))
                await asyncio.sleep(_WAIT_RETRY_S)

    async def _backoff(self, n: int, *, reason: str, exit_code: int | None = None) -> None:
        delay_s = backoff_delay_s(self.deployment, n)
        self.state, self.backoff_s = "backoff", delay_s
        logger.info("replica restarting", agent_id=self.spec.agent_id, delay_s=round(delay_s, 3))
        await self._event("restarting", exit_code=exit_code, reason=reason)
        await asyncio.sleep(delay_s)

    # -- events and logs ------------------------------------------------------------------
    async def _event(
        self, kind: EventKind, *, exit_code: int | None = None, reason: str = ""
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
        )
        try:
            await self.ctx.bus.publish_event("replica", kind, event)
        except Exception as exc:  # best effort: an outage must not stop supervision
            logger.warning("replica event not published", kind=kind, error=repr(exc))

    async def _ship_logs(self, handle: ReplicaHandle) -> None:
        subject = self.ctx.bus.names.log_subject(handle.agent_id)
        headers = {"Agentbus-Node": self.ctx.node_id, "Agentbus-Runtime-Id": handle.runtime_id}
        limit = self.ctx.log_line_max_bytes
        try:
            async for line in self.ctx.runtime.logs(handle):
                data = line.encode()[:limit]
                try:
                    await self.ctx.bus.nc.publish(subject, data, headers=dict(headers))
                    self.ctx.metrics.log_lines.inc()
                except Exception:
                    self.ctx.metrics.log_errors.inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("log shipping ended", agent_id=handle.agent_id, error=repr(exc))

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
