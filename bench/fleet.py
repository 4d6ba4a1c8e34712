"""``just bench fleet``: 100 agent containers on 2 nodes, kill 20, measure the recovery.

One run on one machine: a nats-server (file storage), the scheduler and two supervisors
(``python -m agentbus_scheduler`` / ``agentbus_supervisor``, docker runtime, node ids
``bench-node-1`` and ``-2``) as child processes, and the bench process as the caller.

Phases:

``probe``
    one ``echo`` replica, SIGKILLed ``--probe`` times (``docker kill``): container
    start (its ``State.StartedAt``) → the new agent's first registry heartbeat
    (``AgentInfo.heartbeat_at`` of the first entry with a new ``started_at``).
``ramp``
    deploy ``--replicas`` echo replicas: deploy → every replica registered.
``drill``
    a steady, bounded stream of echo tasks (``--rate`` per second); after a warm-up,
    SIGKILL ``--kill`` random containers at once. Per killed replica: kill → the
    supervisor's ``exited`` event → container started → registered. Tasks are then
    drained: *lost* = not terminal within ``--drain-s``, *failed* = terminal but not
    succeeded; *completed by survivors* = tasks that succeeded on a replica that was
    not killed, finished between the first kill and the last replacement.

All times are wall-clock differences on this one host (container, agent and bench
share the clock). Every container of the run carries ``agentbus.prefix=<prefix>`` and
is removed by id at the end, also after a failure or Ctrl-C; child processes are
stopped by PID.

Usage: ``just bench fleet [--json FILE] [--replicas 100] [--kill 20] [--rate 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiodocker
import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import RequestTimeoutError, UnavailableError
from agentbus.messages import (
    AgentInfo,
    Backoff,
    Deployment,
    DeployReply,
    ReplicaEvent,
    TaskRecord,
)
from agentbus.settings import BusSettings
from bench._procs import Child, children, tool_version
from bench.common import Report, console, percentile, versions
from tests._harness.nats_server import NatsServer, nats_server_binary

NODES = ("bench-node-1", "bench-node-2")
QUIET = {"AGENTBUS_LOG_LEVEL": "WARNING"}
AGENT_ENV = {
    "AGENTBUS_AGENT_LEASE_S": "5",  # a killed agent's task is redelivered after this
    "AGENTBUS_AGENT_FETCH_TIMEOUT_S": "2",
    "AGENTBUS_LOG_LEVEL": "WARNING",
}
STAGES = ("kill_to_die", "die_to_exited_event", "exited_event_to_start", "start_to_registered")
DRILL_BACKOFF = Backoff(initial_s=0.05, factor=2.0, max_s=2.0, jitter=0.2)


def _wall(at: datetime) -> float:
    return at.timestamp()


@dataclass
class Instance:
    """One incarnation of an agent id: its ``started_at`` and first heartbeat (wall s),
    and the CPU seconds its container had used when that heartbeat was seen."""

    started_at: float
    registered_at: float
    cpu_at_registered_s: float | None = None


@dataclass
class Observer:
    """Follows KV ``<p>_agents`` and the replica events of the run."""

    bus: Bus
    docker: aiodocker.Docker
    instances: dict[str, list[Instance]] = field(default_factory=dict)
    replica_events: dict[str, list[ReplicaEvent]] = field(default_factory=dict)
    engine_events: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    """agent id -> (action ``start``/``die``, engine time in wall s), from Docker events."""
    container_ids: dict[str, str] = field(default_factory=dict)
    """agent id -> id of its container last started."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> list[asyncio.Task[None]]:
        await self.bus.nc.subscribe(self.bus.names.events_all("replica"), cb=self._on_event)
        filters = {
            "type": ["container"],
            "event": ["start", "die"],
            "label": [f"agentbus.prefix={self.bus.names.prefix}"],
        }
        engine = self.docker.events.subscribe(filters=json.dumps(filters))  # type: ignore[no-untyped-call]

        async def follow_engine() -> None:
            while (event := await engine.get()) is not None:
                labels = event.get("Actor", {}).get("Attributes", {})
                if agent_id := labels.get("agentbus.agent_id"):
                    at = int(event["timeNano"]) / 1e9
                    self.engine_events.setdefault(agent_id, []).append((event["Action"], at))
                    if event["Action"] == "start":
                        self.container_ids[agent_id] = event["Actor"]["ID"]

        kv = await self.bus.kv(self.bus.names.agents_bucket)
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is None or entry.operation is not None or not entry.value:
                    continue
                info = msgspec.json.decode(entry.value, type=AgentInfo)
                seen = self.instances.setdefault(info.agent_id, [])
                if not seen or seen[-1].started_at != _wall(info.started_at):
                    cid = self.container_ids.get(info.agent_id)
                    cpu = cgroup_cpu_s([cid]) if cid else None
                    inst = Instance(_wall(info.started_at), _wall(info.heartbeat_at), cpu or None)
                    seen.append(inst)
                    self.changed.set()

        return [asyncio.create_task(follow()), asyncio.create_task(follow_engine())]

    async def _on_event(self, msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=ReplicaEvent)
        self.replica_events.setdefault(event.agent_id, []).append(event)

    def registered_since(self, agent_id: str, since_wall: float) -> Instance | None:
        """The first incarnation of ``agent_id`` started after ``since_wall``."""
        for inst in self.instances.get(agent_id, []):
            if inst.started_at > since_wall:
                return inst
        return None

    def engine_after(self, agent_id: str, action: str, since_wall: float) -> float | None:
        for kind, at in self.engine_events.get(agent_id, []):
            if kind == action and at >= since_wall:
                return at
        return None

    def started_from_spare(self, agent_id: str, since_wall: float) -> bool:
        """Whether ``agent_id``'s first start after ``since_wall`` claimed a warm spare."""
        for e in self.replica_events.get(agent_id, []):
            if e.kind == "started" and _wall(e.at) >= since_wall:
                return "warm spare" in e.detail
        return False

    def event_after(self, agent_id: str, kind: str, since_wall: float) -> float | None:
        for e in self.replica_events.get(agent_id, []):
            if e.kind == kind and _wall(e.at) >= since_wall:
                return _wall(e.at)
        return None

    async def wait_for(self, done: Callable[[], object], timeout_s: float, what: str) -> None:
        """Return once ``done()`` is truthy (checked on every registry change).

        Raises:
            TimeoutError: not within ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass


@dataclass
class Run:
    args: argparse.Namespace
    prefix: str
    bus: Bus
    docker: aiodocker.Docker
    observer: Observer
    rep: Report
    pids: dict[int, str]
    """Child processes by pid (scheduler, supervisors, nats-server): CPU is reported."""

    def deployment(self, name: str, replicas: int, warm_spares: int = 0) -> Deployment:
        return Deployment(
            name=name,
            replicas=replicas,
            image=self.args.image,
            image_command=["python", "-m", "agentbus.agents.echo"],
            capabilities=["echo"],
            env=AGENT_ENV,
            backoff=DRILL_BACKOFF,
            max_concurrency=4,
            stop_grace_s=2.0,
            warm_spares=warm_spares,
        )

    async def containers(self, deployment: str, *, spares: bool = False) -> dict[str, str]:
        """agent id -> container id of the run's running containers of ``deployment``
        (``spares``: its warm spares, by spare id, instead of its replicas)."""
        labels = [f"agentbus.prefix={self.prefix}", f"agentbus.deployment={deployment}"]
        filters = {"label": labels, "status": ["running"]}
        found = await self.docker.containers.list(filters=json.dumps(filters))
        return {
            c["Labels"]["agentbus.agent_id"]: c.id
            for c in found
            if (c["Labels"].get("agentbus.replica") == "-1") == spares
        }

    async def started_at(self, agent_id: str) -> float:
        """``State.StartedAt`` of the running container of ``agent_id`` (wall s)."""
        filters = {"label": [f"agentbus.prefix={self.prefix}", f"agentbus.agent_id={agent_id}"]}
        (found,) = await self.docker.containers.list(all=True, filters=json.dumps(filters))
        info = await found.show()
        return datetime.fromisoformat(info["State"]["StartedAt"][:26] + "+00:00").timestamp()


async def deploy(client: Client, deployment: Deployment, timeout_s: float = 60.0) -> DeployReply:
    """``client.deploy``, retried while no scheduler answers yet (it may start later
    than the supervisors on a loaded host).

    Raises:
        UnavailableError: no scheduler answered within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.deploy(deployment)
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def probe(run: Run) -> None:
    """Container start → registered, for one replica, ``--probe`` times."""
    client, obs = Client(run.bus), run.observer
    await deploy(client, run.deployment("probe", 1))
    await obs.wait_for(lambda: obs.instances.get("probe-0"), 60, "probe registered")
    samples: list[float] = []
    host_before, t0 = host_busy_s(), time.time()
    for _ in range(run.args.probe):
        (cid,) = (await run.containers("probe")).values()
        killed_at = time.time()
        await run.docker.containers.container(cid).kill()
        replaced = functools.partial(obs.registered_since, "probe-0", killed_at)
        await obs.wait_for(replaced, 60, "probe replacement registered")
        inst = replaced()
        assert inst is not None
        started = await run.started_at("probe-0")
        samples.append(inst.registered_at - started)
    await client.delete_deployment("probe")
    p50 = percentile(samples, 50)
    run.rep.add("probe_start_to_registered_p50_s", round(p50, 3))
    run.rep.add("probe_start_to_registered_max_s", round(max(samples), 3))
    run.rep.add("probe_samples_count", len(samples))
    run.rep.add(
        "probe_host_busy_cpu_cores", round((host_busy_s() - host_before) / (time.time() - t0), 2)
    )
    for _ in range(300):  # its supervisor stops it: at most 60 s
        if not await run.containers("probe"):
            break
        await asyncio.sleep(0.2)


class TaskStream:
    """``rate`` echo tasks per second until stopped (and at most ``max_count``)."""

    def __init__(self, client: Client, rate: float, max_count: int) -> None:
        self.client, self.rate, self.max_count = client, rate, max_count
        self.ids: list[str] = []
        self.submit_errors = 0
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        began = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for n in range(self.max_count):
            if self.stop.is_set():
                break
            t = asyncio.create_task(self._one(n))
            pending.add(t)
            t.add_done_callback(pending.discard)
            delay = began + (n + 1) / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, n: int) -> None:
        try:
            record = await self.client.submit("echo", {"n": n})
        except Exception:
            self.submit_errors += 1
            return
        self.ids.append(record.task_id)


async def drain(client: Client, ids: list[str], timeout_s: float) -> list[TaskRecord]:
    """Terminal records of ``ids`` (those not terminal within ``timeout_s`` are left out)."""
    done: list[TaskRecord] = []
    try:
        async for record in client.wait_many(ids, timeout_s=timeout_s):
            done.append(record)
    except RequestTimeoutError:
        pass
    return done


async def ramp_and_drill(run: Run) -> None:
    args, rep, obs = run.args, run.rep, run.observer
    client = Client(run.bus)
    n = args.replicas
    began = time.time()
    host_before = host_busy_s()
    reply = await deploy(client, run.deployment("fleet", n, args.warm_spares))
    if reply.unplaced:
        raise RuntimeError(f"{len(reply.unplaced)} replicas unplaced: {reply.unplaced[0].reason}")
    ids = [f"fleet-{i}" for i in range(n)]
    await obs.wait_for(
        lambda: all(obs.registered_since(a, began) for a in ids),
        args.ramp_timeout_s,
        f"{n} replicas registered",
    )
    ramp_s = max(obs.registered_since(a, began).registered_at for a in ids) - began  # type: ignore[union-attr]
    rep.add("ramp_replicas_count", n)
    rep.add("ramp_all_registered_s", round(ramp_s, 2))
    rep.add("ramp_host_busy_cpu_cores", round((host_busy_s() - host_before) / ramp_s, 2))
    per_node = {node: sum(1 for p in reply.placements if p.node_id == node) for node in NODES}
    for node, count in per_node.items():
        rep.add(f"ramp_replicas_on_{node.replace('-', '_')}_count", count)
    console.print(f"ramp: {n} replicas registered in {ramp_s:.1f} s ({per_node})")
    # Where the ramp's time goes: the engine starting containers, or agents starting up.
    started = {a: await run.started_at(a) for a in ids}
    registered = {a: obs.registered_since(a, began).registered_at for a in ids}  # type: ignore[union-attr]
    rep.add("ramp_last_container_started_s", round(max(started.values()) - began, 2))
    ready = [registered[a] - started[a] for a in ids]
    rep.add("ramp_start_to_registered_p50_s", round(percentile(ready, 50), 3))
    rep.add("ramp_start_to_registered_max_s", round(max(ready), 3))

    if args.warm_spares:  # one at a time per node, each once the one before is ready
        want = args.warm_spares * sum(1 for count in per_node.values() if count)
        deadline = time.monotonic() + args.ramp_timeout_s
        while len(await run.containers("fleet", spares=True)) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {want} warm spares started")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # the last ones import
        rep.add("warm_spares_count", want)
        console.print(f"warm spares: {want} started")
    stream = TaskStream(client, args.rate, int(args.rate * args.max_drill_s))
    stream.start()
    # The steady window starts once every agent had time for its first task, which
    # also pays one-off costs (the agent's metrics are made on first use).
    await asyncio.sleep(args.preroll_s)
    running = await run.containers("fleet")
    host_before, fleet_before, t0 = host_busy_s(), cgroup_cpu_s(running.values()), time.time()
    procs_before = process_cpu_s(run.pids)
    await asyncio.sleep(args.warmup_s)
    dt = time.time() - t0
    rep.add("steady_host_busy_cpu_cores", round((host_busy_s() - host_before) / dt, 2))
    fleet_cores = (cgroup_cpu_s(running.values()) - fleet_before) / dt
    rep.add("steady_agent_containers_cpu_cores", round(fleet_cores, 2))
    procs_after = process_cpu_s(run.pids)
    for name in sorted(procs_after):
        used = (procs_after[name] - procs_before.get(name, 0.0)) / dt
        rep.add(f"steady_{name}_cpu_cores", round(used, 2))
    running = await run.containers("fleet")
    victims = random.sample(sorted(running), args.kill)
    survivors = [cid for a, cid in running.items() if a not in victims]
    spares = list((await run.containers("fleet", spares=True)).values())
    killed_at, host_before = time.time(), host_busy_s()
    procs_before = process_cpu_s(run.pids)
    survivors_before, spares_before = cgroup_cpu_s(survivors), cgroup_cpu_s(spares)
    await asyncio.gather(*(run.docker.containers.container(running[a]).kill() for a in victims))
    console.print(f"drill: killed {len(victims)} containers (SIGKILL)")
    await obs.wait_for(
        lambda: all(obs.registered_since(a, killed_at) for a in victims),
        args.recovery_timeout_s,
        "replacements registered",
    )
    busy = (host_busy_s() - host_before) / (time.time() - killed_at)
    rep.add("recovery_host_busy_cpu_cores", round(busy, 2))
    procs_after, dt = process_cpu_s(run.pids), time.time() - killed_at
    survivors_cores = (cgroup_cpu_s(survivors) - survivors_before) / dt
    rep.add("recovery_surviving_agents_cpu_cores", round(survivors_cores, 2))
    rep.add(
        "recovery_spare_containers_cpu_cores", round((cgroup_cpu_s(spares) - spares_before) / dt, 2)
    )
    for name in sorted(procs_after):
        used = (procs_after[name] - procs_before.get(name, 0.0)) / dt
        rep.add(f"recovery_{name}_cpu_cores", round(used, 2))
    recovered_at = max(obs.registered_since(a, killed_at).registered_at for a in victims)  # type: ignore[union-attr]
    await asyncio.sleep(args.tail_s)
    stream.stop.set()
    assert stream.task is not None
    await stream.task

    recovery = [obs.registered_since(a, killed_at).registered_at - killed_at for a in victims]  # type: ignore[union-attr]
    rep.add("recovery_p50_s", round(percentile(recovery, 50), 3))
    rep.add("recovery_p99_s", round(percentile(recovery, 99), 3))
    rep.add("recovery_max_s", round(max(recovery), 3))
    # The same recoveries in stages: engine sees the death (``die``), the supervisor
    # reports ``exited`` (wait returned, logs drained), the new container starts
    # (backoff, remove, create, start), the agent registers (startup).
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    for a in victims:
        die = obs.engine_after(a, "die", killed_at - 1)
        exited = obs.event_after(a, "exited", killed_at - 1)
        # a claimed warm spare started long ago: its start is the supervisor's event
        start = obs.engine_after(a, "start", killed_at) or obs.event_after(a, "started", killed_at)
        inst = obs.registered_since(a, killed_at)
        if die is None or exited is None or start is None or inst is None:
            continue
        for key, value in zip(
            STAGES,
            (die - killed_at, exited - die, start - exited, inst.registered_at - start),
            strict=True,
        ):
            stages[key].append(value)
    rep.add("recovery_stage_samples_count", len(stages[STAGES[0]]))
    claimed = [a for a in victims if obs.started_from_spare(a, killed_at)]
    rep.add("recovery_from_warm_spare_count", len(claimed))
    # CPU of a replacement container from its start to its first heartbeat (cgroup).
    cpus = [i.cpu_at_registered_s for a in victims if (i := obs.registered_since(a, killed_at))]
    if known := [c for c in cpus if c is not None]:
        rep.add("recovery_agent_start_cpu_p50_s", round(percentile(known, 50), 3))
    for key, values in stages.items():
        if values:
            rep.add(f"recovery_{key}_p50_s", round(percentile(values, 50), 3))
            rep.add(f"recovery_{key}_max_s", round(max(values), 3))

    records = await drain(client, stream.ids, args.drain_s)
    by_id = {r.task_id: r for r in records}
    lost = [t for t in stream.ids if t not in by_id]
    failed = [r for r in records if r.status != "succeeded"]
    survivors_done = [
        r
        for r in records
        if r.status == "succeeded"
        and r.agent_id not in victims
        and r.finished_at is not None
        and killed_at <= _wall(r.finished_at) <= recovered_at
    ]
    retried = [r for r in records if len(r.attempts) > 1]
    rep.add("drill_tasks_submitted_count", len(stream.ids))
    rep.add("drill_task_submit_errors_count", stream.submit_errors)
    rep.add("drill_tasks_succeeded_count", len(records) - len(failed))
    rep.add("drill_tasks_failed_count", len(failed))
    rep.add("drill_tasks_lost_count", len(lost))
    rep.add("drill_tasks_retried_count", len(retried))
    rep.add("drill_window_s", round(recovered_at - killed_at, 3))
    rep.add("drill_tasks_completed_by_survivors_count", len(survivors_done))
    rep.add("drill_task_rate_per_s", args.rate)
    if failed:
        console.print(f"[red]failed tasks, e.g. {failed[0].task_id}: {failed[0].error}")
    await client.delete_deployment("fleet")


def summary(rep: Report) -> None:
    f = rep.figures
    rows = [[k, v] for k, v in f.items() if not k.startswith("version_")]
    rep.table("fleet drill", ["figure", "value"], rows)
    targets = [  # (target, key, limit): measured <= limit
        ("all replicas running+registered <= 60 s", "ramp_all_registered_s", 60.0),
        ("recovery p50 <= 1.5 s", "recovery_p50_s", 1.5),
        ("recovery max <= 3 s", "recovery_max_s", 3.0),
        ("0 tasks lost", "drill_tasks_lost_count", 0.0),
    ]
    checks = [
        [t, f[key], "yes" if float(f[key]) <= limit else "NO"]
        for t, key, limit in targets
        if key in f
    ]
    rep.table("targets (issues 4 and 15)", ["target", "measured", "met"], checks)


async def bench(
    args: argparse.Namespace, url: str, prefix: str, rep: Report, pids: dict[int, str]
) -> None:
    bus = await Bus.connect(BusSettings(nats_url=url, prefix=prefix), name="bench-fleet")
    await bus.ensure()
    docker = aiodocker.Docker()
    try:
        observer = Observer(bus, docker)
        tasks = await observer.start()
        run = Run(args, prefix, bus, docker, observer, rep, pids | {os.getpid(): "bench"})
        nodes_kv = await bus.kv(bus.names.nodes_bucket)
        deadline = time.monotonic() + 60
        while len(await live_keys(nodes_kv)) < len(NODES):
            if time.monotonic() > deadline:
                raise TimeoutError("supervisors did not register within 60 s")
            await asyncio.sleep(0.2)
        if args.probe:
            await probe(run)
        await ramp_and_drill(run)
        for t in tasks:
            t.cancel()
    finally:
        await docker.events.stop()  # type: ignore[no-untyped-call]
        await docker.close()
        await bus.close()


def process_cpu_s(pids: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of ``pids`` (by their name) and of the Docker engine's
    processes (``dockerd``, ``containerd``, all ``containerd-shim*`` summed)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        name = pids.get(int(entry.name))
        if name is None and comm in ("dockerd", "containerd"):
            name = comm
        elif name is None and comm.startswith("containerd-shim"):
            name = "containerd_shims"
        if name is not None:
            key = name.replace("-", "_")
            used[key] = used.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def host_busy_s() -> float:
    """CPU seconds the whole host spent busy (all cores), from ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cgroup_cpu_s(container_ids: Iterable[str]) -> float:
    """CPU seconds used so far by these containers (cgroup v1 ``cpuacct`` or v2 ``cpu.stat``)."""
    total = 0.0
    for cid in container_ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        try:
            if v1.exists():
                total += int(v1.read_text()) / 1e9
            elif v2.exists():
                usage = v2.read_text().split("\n", 1)[0].split()  # "usage_usec N"
                total += int(usage[1]) / 1e6
        except (OSError, ValueError, IndexError):
            continue
    return total


async def live_keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []


def remove_containers(prefix: str) -> int:
    """Force-remove (by id) every container of this run; returns how many."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=agentbus.prefix={prefix}"],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = out.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, check=False)
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(prog="just bench fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--kill", type=int, default=20)
    parser.add_argument("--probe", type=int, default=20, help="probe restarts (0: skip)")
    parser.add_argument("--rate", type=float, default=50.0, help="tasks per second")
    parser.add_argument(
        "--warm-spares", type=int, default=0, help="warm spares per node (Deployment.warm_spares)"
    )
    parser.add_argument("--image", default="agentbus/agent:dev")
    parser.add_argument(
        "--preroll-s", type=float, default=3.0, help="tasks before the steady window"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=5.0,
        help="the steady window: tasks measured before the kill",
    )
    parser.add_argument("--tail-s", type=float, default=3.0, help="tasks after recovery")
    parser.add_argument("--max-drill-s", type=float, default=120.0, help="bound of the stream")
    parser.add_argument("--ramp-timeout-s", type=float, default=300.0)
    parser.add_argument("--recovery-timeout-s", type=float, default=120.0)
    parser.add_argument("--drain-s", type=float, default=120.0, help="wait for tasks to end")
    parser.add_argument(
        "--start-limit",
        type=int,
        default=0,
        help="replicas starting at once per supervisor (0: CPU count)",
    )
    args = parser.parse_args()
    if not 0 < args.kill <= args.replicas:
        parser.error("--kill must be between 1 and --replicas")

    rep = Report("fleet")
    rep.print_header(
        **{
            "nats-server": tool_version([nats_server_binary(), "--version"]),
            "docker": tool_version(["docker", "--version"]),
            **versions("aiodocker", "nats-py"),
        }
    )
    prefix = f"fleet{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        log_dir = Path(tmp)
        console.print(f"prefix {prefix}; logs of child processes: {tmp} (kept while running)")
        try:
            with NatsServer(log_dir / "js") as server, children() as kids:
                env = {"AGENTBUS_NATS_URL": server.client_url, "AGENTBUS_PREFIX": prefix, **QUIET}
                kids.append(
                    Child("scheduler", [sys.executable, "-m", "agentbus_scheduler"], log_dir, env)
                )
                for node in NODES:
                    node_env = {
                        **env,
                        "SUPERVISOR_NODE_ID": node,
                        "SUPERVISOR_RUNTIME": "docker",
                        "SUPERVISOR_CAPACITY_REPLICAS": str(max(64, args.replicas)),
                        "SUPERVISOR_STOP_GRACE_S": "2",
                        "SUPERVISOR_HEARTBEAT_S": "1",
                        # Both supervisors share this host: each gets half the default
                        # (2 x CPUs) of starts at once.
                        "SUPERVISOR_START_LIMIT": str(args.start_limit or os.cpu_count() or 1),
                    }
                    supervisor = [sys.executable, "-m", "agentbus_supervisor"]
                    kids.append(Child(node, supervisor, log_dir, node_env))
                try:
                    assert server.proc is not None
                    pids = {kid.pid: kid.name for kid in kids} | {server.proc.pid: "nats-server"}
                    asyncio.run(bench(args, server.client_url, prefix, rep, pids))
                except BaseException as exc:
                    console.print(f"[red]bench failed: {exc!r}")
                    for kid in kids:
                        if kid.proc.poll() is not None:
                            console.print(f"[red]{kid.name} exited:\n{kid.tail()}")
                    raise
        finally:
            if removed := remove_containers(prefix):
                console.print(f"removed {removed} leftover container(s)")
    summary(rep)
    rep.write_json(args.json)


if __name__ == "__main__":
    main()
