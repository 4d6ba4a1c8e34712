"""``just bench cluster``: agentbus on one nats-server (R1) and on a three-server cluster (R3).

One run, one machine, authentication on (the product default), every server an
``EmbeddedStack`` (``cluster=1`` and ``cluster=3``: three clustered nats-servers on
loopback, their streams R3):

1. **Tasks.** The agentbus-auth row of ``just bench tasks`` (``bench.tasks``: a
   scheduler and an echo agent of prefix ``bench``, each with its own creds, the
   caller with the gateway's) against each stack, closed loops at 1 and 64 in flight,
   in rounds that alternate which stack goes first; R3 / R1 for tasks/s and p50/p99
   latency (medians of the per-round ratios).
2. **Stream leader killed.** On the cluster, tasks keep flowing (``--inflight`` in a
   closed loop) while the server leading ``BENCH_TASKS`` is SIGKILLed, ``--kills``
   times; each time: to the first completion of a task submitted after the kill, and
   to half the rate of before (``bench._cluster_drills``). The server is restarted
   with its configuration and the stream back to three current replicas before the
   next kill.
3. **Host death.** On the same cluster, a second supervisor (node ``host-b``) joins the
   stack's own (node ``embedded``); echo replicas are spread over both; ``host-b``'s
   supervisor and its replicas are SIGKILLed; to its node entry gone (KV TTL 10 s)
   and to its replica ids registered from ``embedded``, ``--host-deaths`` times.

Usage: ``just bench cluster [--json FILE] [--tasks N] [--rounds N] [--kills N]
[--host-deaths N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from agentbus.auth.authority import AuthDir, init_auth
from agentbus.bus import Bus
from agentbus.embedded import EmbeddedStack
from agentbus.settings import BusSettings
from bench._auth_fleet import provision
from bench._cluster_drills import HostDeath, Recovery, host_death, leader_kills
from bench._loops import LEVELS, Options, Run, System, compare_rows, measure_all, median_run
from bench._procs import tool_version
from bench.common import Report, console, percentile, versions
from bench.tasks import PREFIX, agentbus_system
from tests._harness.nats_server import nats_server_binary

STACK_PREFIX = "stack"
"""Prefix of the stacks' own services (idle in part 1; the fleet of part 3)."""


@contextlib.asynccontextmanager
async def cluster_stack(size: int, tmp: Path) -> AsyncIterator[EmbeddedStack]:
    """An ``EmbeddedStack`` of ``size`` servers whose auth directory also serves ``bench``."""
    auth = init_auth(tmp / f"auth-{size}", prefix=PREFIX)
    stack = EmbeddedStack(
        cluster=size,
        prefix=STACK_PREFIX,
        auth_dir=auth.path,
        log_level="WARNING",
        stop_grace_s=5.0,
    )
    async with stack:
        yield stack


@contextlib.asynccontextmanager
async def task_row(stack: EmbeddedStack, name: str, opts: Options) -> AsyncIterator[System]:
    """The agentbus-auth row of ``bench.tasks`` on ``stack``'s server(s)."""
    assert stack.credentials is not None
    identities = await provision(stack.nats_url, AuthDir(stack.credentials.auth_dir), PREFIX)
    servers = {n: pid for n, pid in stack.pids.items() if n.startswith("nats-")}
    async with agentbus_system(stack.nats_url, servers, opts, identities, name=name) as system:
        yield system


def bench_bus(stack: EmbeddedStack) -> BusSettings:
    """The operator's settings on ``stack`` for the tasks' prefix."""
    return stack.settings.model_copy(update={"prefix": PREFIX})


async def run(args: argparse.Namespace, rep: Report, tmp: Path) -> None:
    opts = Options(args.tasks, args.warmup, args.max_s, None, tmp, rounds=args.rounds)
    async with contextlib.AsyncExitStack() as outer:
        r3 = await outer.enter_async_context(cluster_stack(3, tmp))
        r3_row = await outer.enter_async_context(task_row(r3, "r3", opts))
        async with cluster_stack(1, tmp) as r1, task_row(r1, "r1", opts) as r1_row:
            console.print("tasks: R1 and R3, auth on")
            rounds = await measure_all([r1_row, r3_row], opts)
        tasks_report(rounds, rep)
        bus = await Bus.connect(bench_bus(r3), name="bench-cluster")
        outer.push_async_callback(bus.close)
        info = await bus.js.stream_info(bus.names.tasks_stream)
        rep.add("r3_tasks_stream_replicas_count", info.config.num_replicas or 1)
        if args.kills:
            console.print(f"stream leader killed, {args.kills} times")
            assert r3_row.one is not None
            recoveries, failed = await leader_kills(
                r3,
                bus,
                r3_row.one,
                kills=args.kills,
                inflight=args.inflight,
                baseline_s=args.baseline_s,
                recovery_timeout_s=args.recovery_timeout_s,
            )
            leader_report(recoveries, failed, args.inflight, rep)
        if args.host_deaths:
            console.print(f"host death, {args.host_deaths} times")
            stack_bus = await Bus.connect(r3.settings, name="bench-cluster-hosts")
            outer.push_async_callback(stack_bus.close)
            deaths = [
                await host_death(r3, stack_bus, tmp, n + 1, args.replicas, 60.0)
                for n in range(args.host_deaths)
            ]
            host_report(deaths, rep)


def tasks_report(rounds: dict[str, dict[int, list[Run]]], rep: Report) -> None:
    rows: list[list[object]] = []
    for system, by_level in rounds.items():
        for level in LEVELS:
            r = median_run(by_level[level])
            key = f"{system}_inflight{level}"
            rep.add(f"{key}_tasks_count", r.count)
            rep.add(f"{key}_tasks_per_s", round(r.tasks_per_s, 1))
            rep.add(f"{key}_p50_latency_ms", round(r.p_ms(50), 3))
            rep.add(f"{key}_p99_latency_ms", round(r.p_ms(99), 3))
            rows.append([system.upper(), level, r.count, r.tasks_per_s, r.p_ms(50), r.p_ms(99)])
    rep.table(
        "tasks, auth on: closed loop, submit → result (median round)",
        ["streams", "in flight", "tasks", "tasks/s", "p50 ms", "p99 ms"],
        rows,
    )
    compare_rows(
        rounds["r3"],
        rounds["r1"],
        rep,
        key="r3_vs_r1",
        labels=("R3", "R1"),
        title="R3 (three servers) / R1 (one server): median of the per-round ratios",
    )


def leader_report(
    recoveries: list[Recovery], errors: dict[str, int], inflight: int, rep: Report
) -> None:
    failed = sum(errors.values())
    first = [r.first_task_s for r in recoveries]
    half = [r.half_rate_s for r in recoveries]
    rep.add("leader_kill_count", len(recoveries))
    rep.add("leader_kill_inflight_count", inflight)
    rep.add("leader_kill_calls_failed_count", failed)
    for kind, count in sorted(errors.items()):
        rep.add(f"leader_kill_calls_failed_{kind}_count", count)
    rows: list[list[object]] = []
    for label, key, values in (
        ("to a new stream leader", "elected", [r.elected_s for r in recoveries]),
        ("to the first task completed", "first_task", first),
        ("to half the rate of before", "half_rate", half),
    ):
        rep.add(f"leader_kill_{key}_p50_s", round(percentile(values, 50), 3))
        rep.add(f"leader_kill_{key}_max_s", round(max(values), 3))
        rows.append([label, percentile(values, 50), max(values), _each(values)])
    before = [r.rate_before_per_s for r in recoveries]
    rep.add("leader_kill_rate_before_p50_per_s", round(percentile(before, 50), 1))
    rep.table(
        f"stream leader SIGKILLed ({len(recoveries)} kills, {inflight} in flight, "
        f"calls failed and retried: {_kinds(errors)})",
        ["from the kill", "p50 s", "max s", "each"],
        rows,
    )


def host_report(deaths: list[HostDeath], rep: Report) -> None:
    rep.add("host_death_count", len(deaths))
    rep.add("host_death_replicas_moved_count", deaths[0].replicas_count)
    rows: list[list[object]] = []
    for label, key, values in (
        ("kill → node entry gone", "node_expired", [d.node_expired_s for d in deaths]),
        ("kill → replicas registered elsewhere", "registered", [d.registered_s for d in deaths]),
        ("node entry gone → registered", "after_expiry", [d.after_expiry_s for d in deaths]),
    ):
        rep.add(f"host_death_{key}_p50_s", round(percentile(values, 50), 3))
        rep.add(f"host_death_{key}_max_s", round(max(values), 3))
        rows.append([label, percentile(values, 50), max(values), _each(values)])
    rep.table(
        f"host death ({len(deaths)} times, {deaths[0].replicas_count} replicas on the host)",
        ["interval", "p50 s", "max s", "each"],
        rows,
    )


def _kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(errors.items())) or "none"


def _each(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="just bench cluster", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument("--tasks", type=int, default=1000, help="tasks per measured loop")
    p.add_argument("--warmup", type=int, default=300, help="tasks before measuring")
    p.add_argument("--max-s", type=float, default=5.0, help="time bound of one loop, s")
    p.add_argument("--rounds", type=int, default=3, help="rounds of both stacks and levels")
    p.add_argument("--kills", type=int, default=5, help="stream leader kills (0: skip)")
    p.add_argument("--inflight", type=int, default=16, help="tasks in flight while killing")
    p.add_argument("--baseline-s", type=float, default=2.0, help="flow before each kill, s")
    p.add_argument("--recovery-timeout-s", type=float, default=30.0)
    p.add_argument("--host-deaths", type=int, default=3, help="host deaths (0: skip)")
    p.add_argument("--replicas", type=int, default=4, help="replicas spread over both nodes")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    rep = Report("cluster")
    rep.print_header(
        **{
            "nats-server": tool_version([nats_server_binary(), "--version"]).split()[-1],
            **versions("nats-py"),
        }
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        console.print(f"logs of child processes: {tmp} (kept only while running)")
        asyncio.run(run(args, rep, Path(tmp)))
    rep.write_json(args.json)


if __name__ == "__main__":
    main()
