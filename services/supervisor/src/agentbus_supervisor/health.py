"""Is a running replica well? Its health check, and its agent's registry heartbeats.

Two watchdogs run beside each running instance; the first that fails makes the
supervisor kill the instance (``unhealthy`` or ``heartbeat``), and the restart policy
takes it from there.

- **Health check** (``Deployment.health``): the supervisor itself runs the command
  inside the replica every ``interval_s`` (``docker exec`` on docker/podman, a
  subprocess with the replica's environment on the process runtime); exit 0 is
  healthy. ``retries`` consecutive failures (non-zero exit, no exit within
  ``timeout_s``, or an engine error) make it unhealthy; failures within
  ``start_period_s`` of the start do not count. Why not Docker's own ``HEALTHCHECK``:
  Docker only reports ``unhealthy`` (it restarts nothing), Podman runs health checks
  only through systemd timers (absent in containers and on many hosts), and the
  process runtime has none, so one supervisor-driven probe behaves the same on all
  three and its output goes straight into the restart event.
- **Heartbeats** (``Deployment.heartbeat_timeout_s``): every agent puts its
  ``AgentInfo`` into KV ``<p>_agents`` every couple of seconds. The check arms once a
  heartbeat of this instance was seen (so images that are not agentbus agents are
  never restarted for silence), and fires when none came for ``heartbeat_timeout_s``
  while the supervisor's own view of the bucket was live: a NATS outage is not
  taken for hung agents (the wait starts again when the watch is back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentbus.errors import AgentBusError
from agentbus.kv.mirror import KvMirror
from agentbus.messages import AgentInfo, Deployment
from agentbus.messages.fleet import HealthCheck
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.restart_policy import Cause
from agentbus_supervisor.runtime import ReplicaHandle, Runtime

WATCHDOG_TICK_S = 0.5
"""Least time between two looks of the heartbeat check at the agents mirror."""
UNWATCHED_LOOK_S = 5.0
"""How often the heartbeat check looks while it gives no verdict (no timeout set)."""


@dataclass
class HeartbeatClock:
    """The heartbeat check of one instance (pure: the caller passes times).

    Attributes:
        started_at: monotonic time the instance started (or was adopted).
        last_seen: monotonic time of the newest heartbeat of this instance, if any.
    """

    started_at: float
    last_seen: float | None = None

    def observe(self, seen_at: float | None) -> None:
        """Note the agent's entry last written at ``seen_at`` (None: no entry)."""
        if seen_at is not None and seen_at >= self.started_at:
            self.last_seen = max(self.last_seen or seen_at, seen_at)

    def overdue(self, *, now: float, timeout_s: float, view_since: float | None) -> bool:
        """Whether the heartbeats stopped for longer than ``timeout_s`` seconds.

        ``view_since``: since when the supervisor's view of the agents bucket has been
        live (None: it is not live now, and no verdict is given).
        """
        if self.last_seen is None or view_since is None:
            return False
        return now - max(self.last_seen, view_since) > timeout_s

    def next_look_s(self, *, now: float, timeout_s: float, view_since: float | None) -> float:
        """Seconds until ``overdue`` could first turn true, at least ``WATCHDOG_TICK_S``.

        Before the first heartbeat, or while the view is not live, that is a whole
        ``timeout_s`` away at the earliest; a newer heartbeat only pushes it further.
        """
        if self.last_seen is None or view_since is None:
            return max(timeout_s, WATCHDOG_TICK_S)
        due = max(self.last_seen, view_since) + timeout_s
        return max(due - now + WATCHDOG_TICK_S / 10, WATCHDOG_TICK_S)


@dataclass
class ProbeState:
    """Consecutive health check failures of one instance (pure)."""

    failures: int = 0

    def record(self, *, ok: bool, in_start_period: bool, retries: int) -> bool:
        """Record one probe; True when the instance is now unhealthy."""
        if ok:
            self.failures = 0
            return False
        if in_start_period:
            return False
        self.failures += 1
        return self.failures >= retries


async def _probe_once(runtime: Runtime, handle: ReplicaHandle, check: HealthCheck) -> str | None:
    """None when healthy, else why not (one line)."""
    try:
        result = await runtime.exec(handle, list(check.command), check.timeout_s)
    except AgentBusError as exc:
        return f"health check could not run: {exc}"
    if result.exit_code == 0:
        return None
    status = "no exit" if result.exit_code is None else f"exit {result.exit_code}"
    tail = result.output.splitlines()[-1] if result.output else ""
    return f"{status}: {tail}" if tail else status


async def health_watchdog(
    runtime: Runtime,
    handle: ReplicaHandle,
    deployment: Callable[[], Deployment],
    metrics: SupervisorMetrics,
) -> str:
    """Probe until the instance is unhealthy; return why (never returns if healthy).

    Reads ``deployment()`` before each probe, so a changed check applies at once;
    with no check configured it only sleeps.
    """
    started = time.monotonic()
    state = ProbeState()
    while True:
        check = deployment().health
        if check is None:
            await asyncio.sleep(WATCHDOG_TICK_S * 4)
            continue
        await asyncio.sleep(check.interval_s)
        if (check := deployment().health) is None:
            continue
        failure = await _probe_once(runtime, handle, check)
        if failure is not None:
            metrics.health_failures.inc()
        in_start = time.monotonic() - started < check.start_period_s
        if state.record(ok=failure is None, in_start_period=in_start, retries=check.retries):
            return f"health check failed {state.failures} times, last: {failure}"


async def heartbeat_watchdog(
    agents: KvMirror[AgentInfo],
    handle: ReplicaHandle,
    deployment: Callable[[], Deployment],
    *,
    node_id: str,
    is_connected: Callable[[], bool],
) -> str:
    """Wait until the agent's heartbeats stop; return why (never returns otherwise).

    The supervisor's view counts as live only while it is connected, its watch of
    ``<p>_agents`` is replayed, and no reconnect happened since the last look; any
    break restarts the wait, so agents are not blamed for a NATS outage. It looks only
    when the heartbeats could be overdue (``HeartbeatClock.next_look_s``), not on a
    fixed tick: an idle fleet's watchdogs sleep through their agents' heartbeats.
    """
    clock = HeartbeatClock(started_at=time.monotonic())
    reconnects = agents.bus.nc.stats["reconnects"]
    quiet_since = clock.started_at
    wait_s = WATCHDOG_TICK_S
    while True:
        await asyncio.sleep(wait_s)
        wait_s = UNWATCHED_LOOK_S
        now = time.monotonic()
        info = agents.values.get(handle.agent_id)
        if info is not None and info.node_id in (None, node_id):
            clock.observe(agents.seen_at.get(handle.agent_id))
        if agents.bus.nc.stats["reconnects"] != reconnects or not is_connected():
            reconnects = agents.bus.nc.stats["reconnects"]
            quiet_since = now
        timeout_s = deployment().heartbeat_timeout_s
        if timeout_s is None:
            continue
        if not agents.live:
            wait_s = WATCHDOG_TICK_S
            continue
        view_since = max(quiet_since, agents.synced_at)
        if clock.overdue(now=now, timeout_s=timeout_s, view_since=view_since):
            return f"no agent heartbeat for {timeout_s:g} s"
        # at most UNWATCHED_LOOK_S: a deployment's timeout may be lowered meanwhile
        wait_s = min(
            clock.next_look_s(now=now, timeout_s=timeout_s, view_since=view_since),
            UNWATCHED_LOOK_S,
        )


async def watchdog(
    runtime: Runtime,
    handle: ReplicaHandle,
    deployment: Callable[[], Deployment],
    *,
    agents: KvMirror[AgentInfo] | None,
    node_id: str,
    metrics: SupervisorMetrics,
    is_connected: Callable[[], bool],
) -> tuple[Cause, str]:
    """Run both checks; return the cause and detail of the first that fails."""
    checks: dict[asyncio.Task[str], Cause] = {
        asyncio.create_task(health_watchdog(runtime, handle, deployment, metrics)): "unhealthy"
    }
    if agents is not None:
        hb = heartbeat_watchdog(
            agents, handle, deployment, node_id=node_id, is_connected=is_connected
        )
        checks[asyncio.create_task(hb)] = "heartbeat"
    try:
        done, _ = await asyncio.wait(checks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        return checks[first], first.result()
    finally:
        for task in checks:
            task.cancel()
        await asyncio.gather(*checks, return_exceptions=True)
