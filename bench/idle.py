"""``just bench idle``: what an idle fleet costs, and how fast it wakes up.

One run on one machine: an ``EmbeddedStack`` (nats-server and the five services as
local processes, authentication on, the supervisor's ``process`` runtime) and the
bench process as the caller. ``--replicas`` echo agents (``python -m
agentbus.agents.echo``, one process each) are deployed; once every one is registered
and ``--settle-s`` has passed with no task at all:

``cpu``
    CPU seconds (user + system, ``psutil``) of every agent process, nats-server and
    each service over ``--window-s``, in cores (CPU s / wall s), per group and in total.
``memory``
    resident memory (RSS) of each agent process, and its unique (USS) and proportional
    (PSS) share where the kernel tells them; p50 and max, MiB.
``wake``
    ``--tasks`` echo tasks, one at a time, ``--gap-s`` apart so that the fleet is idle
    between them: submit (the bench's clock before ``Client.submit``) → the agent's
    handler start (the attempt's ``started_at``, taken by the agent as it begins the
    delivery); p50 and p99. Both clocks are this host's.

``--heartbeat-s`` sets the agents' heartbeat interval (``AGENTBUS_AGENT_HEARTBEAT_S``)
to show what heartbeats cost; keep it well below the registry's TTL.

Usage: ``just bench idle [--json FILE] [--replicas 100] [--window-s 60] [--tasks 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.messages import AgentInfo, Deployment
from bench._procs import tool_version
from bench.common import Report, console, percentile, versions
from tests._harness.nats_server import nats_server_binary

PREFIX = "idle"
DEPLOYMENT = "idle"
MIB = 1024 * 1024
TARGET_CORES = 0.05
TARGET_RSS_MIB = 40.0
TARGET_WAKE_P50_MS = 10.0


@dataclass
class Sample:
    """CPU seconds so far, by process name (``agent:<id>`` for agents)."""

    cpu_s: dict[str, float]
    at: float


def cpu_sample(procs: dict[str, psutil.Process]) -> Sample:
    """User + system CPU seconds of each live process of ``procs``."""
    used: dict[str, float] = {}
    for name, proc in procs.items():
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        used[name] = t.user + t.system
    return Sample(used, time.monotonic())


def group(name: str) -> str:
    return "agents" if name.startswith("agent:") else name.replace("-", "_")


async def idle_agents(client: Client) -> list[AgentInfo]:
    """The deployment's registered agents (``ready``, with a pid)."""
    agents = await client.agents()
    return [a for a in agents if a.deployment == DEPLOYMENT and a.pid and a.status == "ready"]


async def wait_registered(client: Client, replicas: int, timeout_s: float) -> list[AgentInfo]:
    """Return once ``replicas`` agents of the deployment are registered.

    Raises:
        TimeoutError: not within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = await idle_agents(client)
        if len(found) >= replicas:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {replicas} agents registered in {timeout_s} s")
        await asyncio.sleep(1.0)


def cpu_figures(before: Sample, after: Sample, rep: Report) -> list[list[object]]:
    """Cores per group (and total) between two samples; table rows."""
    wall_s = after.at - before.at
    cores: dict[str, float] = {}
    for name, used in after.cpu_s.items():
        if name in before.cpu_s:
            key = group(name)
            cores[key] = cores.get(key, 0.0) + (used - before.cpu_s[name]) / wall_s
    rows: list[list[object]] = []
    for key in sorted(cores, key=lambda k: -cores[k]):
        rep.add(f"idle_{key}_cpu_cores", round(cores[key], 4))
        rows.append([key, f"{cores[key]:.4f}"])
    total = sum(cores.values())
    rep.add("idle_total_cpu_cores", round(total, 4))
    rep.add("idle_window_s", round(wall_s, 1))
    rows.append(["total", f"{total:.4f}"])
    return rows


def memory_figures(agents: dict[str, psutil.Process], rep: Report) -> list[list[object]]:
    """RSS / USS / PSS per agent, p50 and max (MiB); table rows."""
    kinds: dict[str, list[float]] = {"rss": [], "uss": [], "pss": []}
    for proc in agents.values():
        mem: object
        try:
            mem = proc.memory_full_info()
        except psutil.AccessDenied:
            mem = proc.memory_info()
        except psutil.Error:
            continue
        for kind, values in kinds.items():
            if (v := getattr(mem, kind, None)) is not None:
                values.append(v / MIB)
    rows: list[list[object]] = []
    for kind, values in kinds.items():
        if values:
            p50, top = percentile(values, 50), max(values)
            rep.add(f"agent_{kind}_p50_mib", round(p50, 1))
            rep.add(f"agent_{kind}_max_mib", round(top, 1))
            rows.append([kind.upper(), round(p50, 1), round(top, 1)])
    return rows


async def wake_figures(client: Client, args: argparse.Namespace, rep: Report) -> list[float]:
    """Submit → handler start (ms) of ``--tasks`` lone tasks ``--gap-s`` apart."""
    samples: list[float] = []
    for n in range(args.tasks):
        await asyncio.sleep(args.gap_s)
        submitted = time.time()
        record = await client.submit("echo", {"n": n})
        done = await client.wait(record.task_id, timeout_s=30.0)
        if done.status != "succeeded" or not done.attempts:
            raise RuntimeError(f"task {done.task_id} ended {done.status}: {done.error}")
        samples.append((done.attempts[0].started_at.timestamp() - submitted) * 1000)
    rep.add("wake_tasks_count", len(samples))
    rep.add("wake_gap_s", args.gap_s)
    rep.add("wake_submit_to_start_p50_ms", round(percentile(samples, 50), 2))
    rep.add("wake_submit_to_start_p99_ms", round(percentile(samples, 99), 2))
    rep.add("wake_submit_to_start_max_ms", round(max(samples), 2))
    return samples


async def run(args: argparse.Namespace, rep: Report) -> None:
    stack = EmbeddedStack(
        runtime="process",
        prefix=PREFIX,
        log_level="WARNING",
        stop_grace_s=5.0,
        extra_env={"SUPERVISOR_CAPACITY_REPLICAS": str(max(64, args.replicas))},
    )
    async with stack:
        bus = await Bus.connect(stack.settings, name="bench-idle")
        client = Client(bus)
        try:
            began = time.monotonic()
            heartbeat = (
                {"AGENTBUS_AGENT_HEARTBEAT_S": str(args.heartbeat_s)} if args.heartbeat_s else {}
            )
            deployment = Deployment(
                name=DEPLOYMENT,
                replicas=args.replicas,
                command=[sys.executable, "-m", "agentbus.agents.echo"],
                capabilities=["echo"],
                env={"AGENTBUS_LOG_LEVEL": "WARNING", **heartbeat},
                stop_grace_s=2.0,
            )
            await client.deploy(deployment)
            found = await wait_registered(client, args.replicas, args.ramp_timeout_s)
            console.print(f"{len(found)} agents registered in {time.monotonic() - began:.1f} s")
            rep.add("replicas_count", len(found))
            if args.heartbeat_s:
                rep.add("agent_heartbeat_s", args.heartbeat_s)
            await asyncio.sleep(args.settle_s)
            found = await wait_registered(client, args.replicas, 60.0)  # none restarted
            agents = {f"agent:{a.agent_id}": psutil.Process(a.pid) for a in found if a.pid}
            services = {name: psutil.Process(pid) for name, pid in stack.pids.items()}
            procs = agents | services
            console.print(f"sampling CPU for {args.window_s:.0f} s")
            before = cpu_sample(procs)
            await asyncio.sleep(args.window_s)
            after = cpu_sample(procs)
            cpu_rows = cpu_figures(before, after, rep)
            mem_rows = memory_figures(agents, rep)
            rep.table("idle CPU, cores", ["process group", "cores"], cpu_rows)
            rep.table("memory per idle agent, MiB", ["kind", "p50", "max"], mem_rows)
            if args.tasks:
                console.print(f"wake: {args.tasks} tasks, {args.gap_s} s apart")
                await wake_figures(client, args, rep)
            await client.delete_deployment(DEPLOYMENT)
        finally:
            await bus.close()


def summary(rep: Report) -> None:
    f = rep.figures
    rows = [[k, v] for k, v in f.items() if not k.startswith("version_")]
    rep.table("idle fleet", ["figure", "value"], rows)
    targets = [  # (target, key, limit): measured <= limit
        (f"total <= {TARGET_CORES} cores", "idle_total_cpu_cores", TARGET_CORES),
        (f"RSS per agent <= {TARGET_RSS_MIB:.0f} MiB", "agent_rss_p50_mib", TARGET_RSS_MIB),
        (
            f"wake p50 <= {TARGET_WAKE_P50_MS:.0f} ms",
            "wake_submit_to_start_p50_ms",
            TARGET_WAKE_P50_MS,
        ),
    ]
    checks = [
        [t, f[key], "yes" if float(f[key]) <= limit else "NO"]
        for t, key, limit in targets
        if key in f
    ]
    rep.table("targets (issue 15, target 3)", ["target", "measured", "met"], checks)


def main() -> None:
    parser = argparse.ArgumentParser(prog="just bench idle", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--settle-s", type=float, default=20.0, help="idle before sampling")
    parser.add_argument("--window-s", type=float, default=60.0, help="CPU sampling window")
    parser.add_argument("--tasks", type=int, default=50, help="wake-up tasks (0: skip)")
    parser.add_argument("--gap-s", type=float, default=2.0, help="idle time before each task")
    parser.add_argument(
        "--heartbeat-s", type=float, help="agents' heartbeat interval (default: theirs)"
    )
    parser.add_argument("--ramp-timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    rep = Report("idle")
    rep.print_header(
        **{"nats-server": tool_version([nats_server_binary(), "--version"])},
        **versions("nats-py", "psutil"),
    )
    asyncio.run(run(args, rep))
    summary(rep)
    rep.write_json(args.json)


if __name__ == "__main__":
    main()
