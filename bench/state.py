"""``just bench state``: checkpoint put/get latency and throughput, restore time, traces.

One fresh nats-server (file storage) and the checkpoint service as its own process
(``python -m agentbus_checkpoint``, logging at WARNING); the caller is this process.

``checkpoint put/get`` at 1 KiB, 64 KiB and 4 MiB of random (incompressible) data:
closed loops of C callers (C = 1 and 16), each on a thread of its own, each putting
versions on its own thread id (put = ``CheckpointClient.put`` with the parent, a
compare-and-set; 4 MiB goes to the Object Store by reference) and then reading them
back (get = latest, data fetched and SHA-256 checked). Figures per size and C: p50
and p99 latency (ms), operations per second, MiB per second.

``restore``: the time from ``Agent.run`` to its durable state loaded (the restore a
restarted agent does before it takes tasks: list + get + decode), for a saved state
of 1 KiB and 4 MiB, over repeated stop/start cycles of an in-process agent.

``put target``: the client's target, ``checkpoint_put_64kib_c1_p99_ms`` <= 5 ms, printed
as met or missed (``checkpoint_put_64kib_c1_p99_target``).

``langgraph``: ``bench.state_langgraph`` (``AgentbusSaver`` on this checkpoint service
against LangGraph's ``AsyncPostgresSaver`` on a PostgreSQL it starts).

``traces``: ``bench.traces_bench.run_traces_bench`` (10,000 concurrent deposits over
10 hot locations) when that module is present.

Usage: ``just bench state [--json FILE] [--scale X]`` (``--scale`` multiplies the
operation counts, e.g. 0.1 for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import UnavailableError
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings, BusSettings
from agentbus.state.checkpoints import CheckpointClient
from bench._procs import Child, children, tool_version
from bench.common import Report, closed_loops, console, percentile, versions
from bench.state_langgraph import run_langgraph_bench
from tests._harness.nats_server import NatsServer, nats_server_binary

KIB = 1024
MIB = 1024 * KIB
SIZES = ((1 * KIB, "1kib", 400), (64 * KIB, "64kib", 200), (4 * MIB, "4mib", 24))
"""(bytes, key, operations per caller level)."""
CALLERS = (1, 16)
RESTORES = ((1 * KIB, "1kib", 30), (4 * MIB, "4mib", 10))
PUT_64KIB_C1_P99_TARGET_MS = 5.0
QUIET = {"AGENTBUS_LOG_LEVEL": "WARNING", "CHECKPOINT_SWEEP_INTERVAL_S": "0"}


async def _ready(bus: Bus, child: Child, timeout_s: float = 60.0) -> None:
    client = CheckpointClient(bus, "bench-probe")
    deadline = time.monotonic() + timeout_s
    while True:
        child.check()
        try:
            await client.latest("probe")
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _put_get(
    client: CheckpointClient, run: str, payloads: list[bytes], size: int
) -> tuple[Callable[[int, int], Awaitable[None]], Callable[[int, int], Awaitable[None]]]:
    """The put and get operations of one run: caller ``c`` writes thread ``<run>-<c>``."""
    heads: dict[int, str | None] = {}

    async def put(caller: int, i: int) -> None:
        ckpt = await client.put(f"{run}-{caller}", payloads[i % 4], parent_id=heads.get(caller))
        heads[caller] = ckpt.checkpoint_id

    async def get(caller: int, i: int) -> None:
        got = await client.get(f"{run}-{caller}")
        assert len(got.data) == size

    return put, get


def _figures(report: Report, key: str, size: int, latencies: list[float], wall_s: float) -> None:
    ops = len(latencies) / wall_s
    report.add(f"{key}_p50_ms", round(percentile(latencies, 50), 3))
    report.add(f"{key}_p99_ms", round(percentile(latencies, 99), 3))
    report.add(f"{key}_per_s", round(ops, 1))
    report.add(f"{key}_mib_per_s", round(ops * size / MIB, 2))
    report.add(f"{key}_count", len(latencies))


async def bench_checkpoints(bus: Bus, report: Report, scale: float) -> None:
    """Put and get figures for every size and caller count."""
    client = CheckpointClient(bus, "bench")
    rows = []
    for size, label, count in SIZES:
        payloads = [os.urandom(size) for _ in range(4)]
        for callers in CALLERS:
            total = max(callers, int(count * scale))
            run = f"{label}-c{callers}"

            put, get = _put_get(client, run, payloads, size)

            for name, op in (("put", put), ("get", get)):
                latencies, wall_s = await closed_loops(callers, total, op)
                key = f"checkpoint_{name}_{label}_c{callers}"
                _figures(report, key, size, latencies, wall_s)
                rows.append(
                    (
                        name,
                        label,
                        callers,
                        report.figures[f"{key}_p50_ms"],
                        report.figures[f"{key}_p99_ms"],
                        report.figures[f"{key}_per_s"],
                        report.figures[f"{key}_mib_per_s"],
                    )
                )
            for caller in range(callers):
                await client.delete_thread(f"{run}-{caller}")
    report.table(
        "checkpoints", ["op", "size", "callers", "p50 ms", "p99 ms", "ops/s", "MiB/s"], rows
    )


def report_put_target(report: Report) -> None:
    """Print and record whether the 64 KiB single-caller put p99 meets its target."""
    p99 = float(report.figures["checkpoint_put_64kib_c1_p99_ms"])
    verdict = "met" if p99 <= PUT_64KIB_C1_P99_TARGET_MS else "missed"
    report.add("checkpoint_put_64kib_c1_p99_target_ms", PUT_64KIB_C1_P99_TARGET_MS)
    report.add("checkpoint_put_64kib_c1_p99_target", verdict)
    colour = "green" if verdict == "met" else "red"
    console.print(
        f"[{colour}]checkpoint put 64 KiB, 1 caller: p99 {p99:.3f} ms; "
        f"target p99 <= {PUT_64KIB_C1_P99_TARGET_MS:g} ms: {verdict}"
    )


async def bench_restore(bus: Bus, settings: BusSettings, report: Report, scale: float) -> None:
    """Agent start -> durable state loaded, for small and large saved states."""
    rows = []
    for size, label, count in RESTORES:
        agent_id = f"bench-restore-{label}"
        state = {"blob": os.urandom(size // 2).hex()}  # JSON of about ``size`` bytes
        times_ms: list[float] = []
        for i in range(max(3, int(count * scale))):
            agent = Agent(
                "bench",
                settings=AgentSettings(agent_id=agent_id, heartbeat_s=5),
                bus_settings=settings,
                state_type=dict[str, Any],
            )

            @agent.handler("bench-noop")
            async def noop(ctx: TaskContext, value: Any) -> Any:
                return value

            stop = asyncio.Event()
            run = asyncio.create_task(agent.run(bus, stop))
            await asyncio.wait_for(agent.durable.restored.wait(), 60)
            if i == 0:
                agent.state = state
                await agent.save_state()
            else:
                assert agent.state == state, "restored state differs"
                assert agent.durable.restore_s is not None
                times_ms.append(agent.durable.restore_s * 1000)
            stop.set()
            await asyncio.wait_for(run, 60)
        key = f"restore_{label}"
        report.add(f"{key}_p50_ms", round(percentile(times_ms, 50), 3))
        report.add(f"{key}_p99_ms", round(percentile(times_ms, 99), 3))
        report.add(f"{key}_count", len(times_ms))
        rows.append(
            (label, len(times_ms), report.figures[f"{key}_p50_ms"], report.figures[f"{key}_p99_ms"])
        )
        await CheckpointClient(bus, agent_id).delete_thread("agent")
    report.table(
        "restore: agent start -> state loaded", ["state", "runs", "p50 ms", "p99 ms"], rows
    )


async def run(args: argparse.Namespace, url: str, log_dir: Path, report: Report) -> None:
    settings = BusSettings(nats_url=url, prefix="bench", request_timeout_s=30.0)
    bus = await Bus.connect(settings, name="bench-state")
    try:
        await bus.ensure()
        with children() as kids:
            env = {"AGENTBUS_NATS_URL": url, "AGENTBUS_PREFIX": "bench", **QUIET}
            cmd = [sys.executable, "-m", "agentbus_checkpoint"]
            service = Child("checkpoint", cmd, log_dir, env)
            kids.append(service)
            await _ready(bus, service)
            await bench_checkpoints(bus, report, args.scale)
            report_put_target(report)
            await bench_restore(bus, settings, report, args.scale)
            await run_langgraph_bench(bus, report, args.scale)
    finally:
        await bus.close()
    if importlib.util.find_spec("bench.traces_bench") is None:
        console.print("[yellow]bench/traces_bench.py is missing: no trace figures")
        return
    from bench.traces_bench import run_traces_bench

    await run_traces_bench(report, url)


def main() -> None:
    """``python -m bench.state``."""
    logger.remove()  # the in-process restore agents log at INFO otherwise
    logger.add(sys.stderr, level="WARNING")
    parser = argparse.ArgumentParser(prog="just bench state", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="Write every figure to this file.")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="Multiply operation counts (0.1 for a smoke run)."
    )
    args = parser.parse_args()
    report = Report("state")
    report.print_header(
        **{"nats-server": tool_version([nats_server_binary(), "--version"])},
        **versions("nats-py", "agentbus", "msgspec", "langgraph", "langgraph-checkpoint-postgres"),
    )
    report.add("scale_ratio", args.scale)
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        log_dir = Path(tmp)
        with NatsServer(log_dir / "js") as server:
            asyncio.run(run(args, server.client_url, log_dir, report))
    report.write_json(args.json)
    if report.figures.get("traces_lost_count"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
