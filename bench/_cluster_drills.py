"""The two failure drills of ``just bench cluster``, on an ``EmbeddedStack(cluster=3)``.

``leader_kills``: tasks flow (a closed loop of the tasks benchmark's agentbus-auth
row) while the nats-server leading ``<P>_TASKS`` is SIGKILLed; each kill is timed to
the first completion of a task submitted after it, and to the end of the first 0.5 s
window after it in which such tasks complete at half the rate of before the kill.
The server is then restarted (``EmbeddedStack.restart_server``) and the stream
brought back to three current replicas before the next kill.

``host_deaths``: a second supervisor (``host-b``, its own node creds, state and
creds directory) joins the stack's node; a deployment of echo replicas spread over
both nodes is made; then ``host-b`` dies: its supervisor and its replica processes
are SIGKILLed at once. Timed: the kill to its ``<p>_nodes`` entry gone (TTL), and to
every replica id of ``host-b`` registered in ``<p>_agents`` from the surviving node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from agentbus.auth.authority import service_creds
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import NODE_ID, EmbeddedStack
from agentbus.messages import AgentInfo, Deployment
from bench._procs import Child
from bench.common import console
from bench.fleet import deploy

HOST_B = "host-b"
"""Node id of the supervisor that dies."""
WINDOW_S = 0.5
"""Width of the window in which the rate after a kill is compared with before."""


# -- leader kills ---------------------------------------------------------------------
@dataclass
class Flow:
    """A closed loop of tasks that survives failures: every completion is kept."""

    one: Callable[[], Awaitable[None]]
    done: list[tuple[float, float]] = field(default_factory=list)
    """(submitted, completed), monotonic s, of every task that succeeded."""
    errors: dict[str, int] = field(default_factory=dict)
    """Failed calls of ``one`` by exception type (each caller retries after 50 ms)."""
    callers: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, inflight: int) -> None:
        self.callers = [asyncio.create_task(self._caller()) for _ in range(inflight)]

    async def stop(self) -> None:
        for caller in self.callers:
            caller.cancel()
        await asyncio.gather(*self.callers, return_exceptions=True)

    async def _caller(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.one()
            except Exception as exc:  # any failure while a server is down: count, go on
                kind = type(exc).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
                await asyncio.sleep(0.05)
                continue
            self.done.append((t0, time.monotonic()))

    def rate_per_s(self, start: float, end: float, *, submitted_after: float = 0.0) -> float:
        """Completions per second in ``(start, end]`` of tasks submitted after a time."""
        n = sum(1 for s, c in self.done if start < c <= end and s >= submitted_after)
        return n / (end - start)


@dataclass
class Recovery:
    """One kill of the stream leader, in s from the kill."""

    leader: str
    elected_s: float
    """To a new leader of the stream (nats-server's Raft election)."""
    first_task_s: float
    half_rate_s: float
    rate_before_per_s: float


async def tasks_leader(bus: Bus, timeout_s: float = 30.0) -> str:
    """The server leading ``<P>_TASKS`` (waits out an election)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await bus.js.stream_info(bus.names.tasks_stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        except nats.errors.TimeoutError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{bus.names.tasks_stream} has no leader after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def new_leader(bus: Bus, old: str, timeout_s: float) -> float:
    """Seconds until ``<P>_TASKS`` answers with a leader other than ``old`` (polled)."""
    t0 = time.monotonic()
    subject = f"$JS.API.STREAM.INFO.{bus.names.tasks_stream}"
    while time.monotonic() - t0 < timeout_s:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            reply = json.loads((await bus.nc.request(subject, b"", timeout=0.25)).data)
            if (leader := reply.get("cluster", {}).get("leader")) and leader != old:
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{bus.names.tasks_stream}: no new leader within {timeout_s:.0f} s")


async def replicas_current(bus: Bus, size: int, timeout_s: float = 60.0) -> None:
    """Wait until ``<P>_TASKS`` has a leader and ``size - 1`` current followers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.TimeoutError):
            info = await bus.js.stream_info(bus.names.tasks_stream)
            followers = (info.cluster.replicas or []) if info.cluster else []
            current = [r for r in followers if r.current and not r.offline]
            if info.cluster and info.cluster.leader and len(current) == size - 1:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{bus.names.tasks_stream}: replicas not current within {timeout_s:.0f} s")


async def leader_kills(
    stack: EmbeddedStack,
    bus: Bus,
    one: Callable[[], Awaitable[None]],
    *,
    kills: int,
    inflight: int,
    baseline_s: float,
    recovery_timeout_s: float,
) -> tuple[list[Recovery], dict[str, int]]:
    """``kills`` times: SIGKILL the ``<P>_TASKS`` leader under load, time, restart it.

    ``bus``: a connection of the tasks' prefix (stream info). Returns the recoveries
    and the calls of ``one`` that failed during the drill (then retried), by exception type.
    """
    flow = Flow(one)
    flow.start(inflight)
    recoveries: list[Recovery] = []
    try:
        for n in range(kills):
            await asyncio.sleep(baseline_s)
            leader = await tasks_leader(bus)
            now = time.monotonic()
            before = flow.rate_per_s(now - baseline_s + 0.5, now)
            os.kill(stack.pids[leader], signal.SIGKILL)
            killed = time.monotonic()
            elected = asyncio.create_task(new_leader(bus, leader, recovery_timeout_s))
            first, half = None, None
            while (
                first is None or half is None
            ) and time.monotonic() < killed + recovery_timeout_s:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                after = [c for s, c in flow.done if s >= killed]
                if first is None and after:
                    first = min(after) - killed
                rate = flow.rate_per_s(now - WINDOW_S, now, submitted_after=killed)
                if half is None and now - WINDOW_S >= killed and rate >= before / 2:
                    half = now - killed
            if first is None or half is None:
                elected.cancel()
                raise TimeoutError(f"kill {n + 1}: tasks not back within {recovery_timeout_s} s")
            elected_s = await elected
            recoveries.append(Recovery(leader, elected_s, first, half, before))
            console.print(
                f"  kill {n + 1}: {leader} (leader); new leader after {elected_s:.2f} s, "
                f"first task after {first:.2f} s, "
                f"half the rate ({before:,.0f}/s before) after {half:.2f} s"
            )
            await _wait(_exited(stack, leader), 10.0, f"{leader} exited")
            await stack.restart_server(leader)
            await replicas_current(bus, stack.cluster)
    finally:
        await flow.stop()
    return recoveries, flow.errors


def _exited(stack: EmbeddedStack, name: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return name in stack.failed()

    return probe


# -- host deaths ------------------------------------------------------------------------
@dataclass
class HostDeath:
    """One death of ``host-b``, in s from the kill."""

    replicas_count: int
    node_expired_s: float
    registered_s: float

    @property
    def after_expiry_s(self) -> float:
        return self.registered_s - self.node_expired_s


def echo_deployment(name: str, replicas: int) -> Deployment:
    """Echo agents as local processes, spread over the nodes."""
    return Deployment(
        name=name,
        replicas=replicas,
        command=[sys.executable, "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5", "AGENTBUS_LOG_LEVEL": "WARNING"},
        spread="node",
        stop_grace_s=1.0,
    )


def host_b_env(stack: EmbeddedStack, work: Path) -> dict[str, str]:
    """Environment of ``host-b``'s supervisor: its node creds and its own directories."""
    assert stack.credentials is not None, "the drill runs with authentication on"
    auth = stack.credentials.auth_dir
    creds = service_creds(
        auth, stack.prefix, "supervisor", node_id=HOST_B, path=work / "host-b.creds"
    )
    agent_creds = work / "host-b-agent-creds"
    agent_creds.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        "AGENTBUS_NATS_URL": stack.nats_url,
        "AGENTBUS_PREFIX": stack.prefix,
        "AGENTBUS_LOG_LEVEL": "WARNING",
        "AGENTBUS_CREDS_FILE": str(creds),
        "SUPERVISOR_NODE_ID": HOST_B,
        "SUPERVISOR_RUNTIME": "process",
        "SUPERVISOR_AUTH_DIR": str(auth),
        "SUPERVISOR_CREDS_DIR": str(agent_creds),
        "SUPERVISOR_CREDS_HOST_DIR": str(agent_creds),
    }


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def node_live(nodes: KeyValue, node_id: str) -> bool:
    """Whether ``node_id`` has an entry in ``<p>_nodes``: not deleted, purged or expired
    (the TTL's limit marker is an entry without a value)."""
    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
        return bool((await nodes.get(node_id)).value)
    return False


async def _agents(bus: Bus, ids: list[str]) -> dict[str, AgentInfo]:
    kv = await bus.kv(bus.names.agents_bucket)
    out = {}
    for agent_id in ids:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(agent_id)
            if entry.value:
                out[agent_id] = msgspec.json.decode(entry.value, type=AgentInfo)
    return out


async def _wait(probe: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


async def host_death(
    stack: EmbeddedStack, bus: Bus, work: Path, rep_n: int, replicas: int, timeout_s: float
) -> HostDeath:
    """Start ``host-b``, spread a deployment over it and the stack's node, kill it, time."""
    client = Client(bus)
    nodes = await bus.kv(bus.names.nodes_bucket)
    name = f"hostdeath{rep_n}"
    ids = [f"{name}-{i}" for i in range(replicas)]
    supervisor = Child(
        f"host-b-{rep_n}",
        [sys.executable, "-m", "agentbus_supervisor"],
        work,
        host_b_env(stack, work),
    )
    try:

        async def host_b_live() -> bool:
            supervisor.check()
            return await node_live(nodes, HOST_B)

        await _wait(host_b_live, timeout_s, "host-b registered")
        await deploy(client, echo_deployment(name, replicas))

        async def all_registered() -> bool:
            return len(await _agents(bus, ids)) == replicas

        await _wait(all_registered, timeout_s, f"{replicas} replicas registered")
        on_b = [a for a, info in (await _agents(bus, ids)).items() if info.node_id == HOST_B]
        if not on_b:
            raise RuntimeError(f"no replica of {name} was placed on {HOST_B}")
        victims = [supervisor.pid, *child_pids(supervisor.pid)]
        killed_wall, killed = time.time(), time.monotonic()
        for pid in victims:  # the host dies: its supervisor and its replicas at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        expired: float | None = None

        async def moved() -> bool:
            nonlocal expired
            if expired is None and not await node_live(nodes, HOST_B):
                expired = time.monotonic() - killed
            infos = await _agents(bus, on_b)
            return len(infos) == len(on_b) and all(
                i.node_id == NODE_ID and _wall(i.started_at) > killed_wall for i in infos.values()
            )

        await _wait(moved, timeout_s, f"replicas of {HOST_B} registered on {NODE_ID}")
        registered = time.monotonic() - killed
        assert expired is not None
        death = HostDeath(len(on_b), expired, registered)
        console.print(
            f"  host death {rep_n}: {len(on_b)} replicas; node entry gone after "
            f"{expired:.2f} s, replicas registered on {NODE_ID} after {registered:.2f} s"
        )
        return death
    finally:
        supervisor.kill()
        with contextlib.suppress(Exception):
            await client.delete_deployment(name)


def _wall(at: datetime) -> float:
    return at.timestamp()
