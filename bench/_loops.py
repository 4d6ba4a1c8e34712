"""The closed loops of ``bench.tasks`` (and ``bench.events``): runs, systems, rounds.

A ``System`` is one system under test, started; ``measure_all`` warms every system up,
then runs ``Options.rounds`` rounds of every level (``LEVELS``) and system, reversing
the systems' order every other round, each loop's CPU measured per process from
``/proc`` and (``Options.profile``) profiled in the first round.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._procs import Child, cpu_s
from bench.common import Report, console, percentile

LEVELS = (1, 64)
"""Tasks in flight of every measured loop."""


@dataclass
class Run:
    """One measured closed loop, and the CPU each process spent per task in it."""

    count: int
    elapsed_s: float
    latencies_s: list[float]
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def p_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000 if self.latencies_s else float("nan")


async def closed_loop(
    one: Callable[[], Awaitable[None]], total: int, inflight: int, max_s: float
) -> Run:
    """Keep ``inflight`` calls of ``one`` outstanding until ``total`` are done or ``max_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    latencies: list[float] = []
    started = 0

    async def caller() -> None:
        nonlocal started
        while started < total and loop.time() < deadline:
            started += 1
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(inflight)))
    return Run(len(latencies), time.perf_counter() - t0, latencies)


@dataclass
class Options:
    tasks: int
    warmup: int
    max_s: float
    profile: Path | None
    log_dir: Path
    rounds: int = 1
    auth: str = "both"
    """Which agentbus rows: with NATS auth ``off``, ``on`` or ``both``."""


@dataclass
class System:
    """One system under test, started: its closed loop, the processes whose CPU counts."""

    name: str
    loop: Callable[[int, int, float], Awaitable[Run]]
    """``loop(total, inflight, max_s)``: one measured closed loop."""
    pids: dict[str, int]
    profiled: list[Child] = field(default_factory=list)
    one: Callable[[], Awaitable[None]] | None = None
    """One task, submit to result (None: the system's loop is all there is)."""


class CpuMeter:
    """CPU seconds of named processes (this one is ``caller``) across a block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"caller": os.getpid(), **pids}
        self.start: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self.start = {name: cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def per_task_ms(self, count: int) -> dict[str, float]:
        """CPU ms per task of each process since ``__enter__``."""
        return {
            name: (cpu_s(pid) - self.start[name]) * 1000 / max(count, 1)
            for name, pid in self.pids.items()
        }

    def __exit__(self, *exc: object) -> None:
        pass


def _print_run(name: str, level: int, r: Run) -> None:
    console.print(
        f"  {name} in flight {level}: {r.count} tasks, {r.tasks_per_s:,.0f}/s, "
        f"p50 {r.p_ms(50):.2f} ms, p99 {r.p_ms(99):.2f} ms"
    )


async def measure(system: System, level: int, opts: Options, *, profile: bool) -> Run:
    """One closed loop of ``system`` at ``level`` tasks in flight, its CPU measured."""
    out = opts.profile if profile else None
    with _Profiling(system.name, level, out, system.profiled), CpuMeter(system.pids) as meter:
        run = await system.loop(opts.tasks, level, opts.max_s)
        run.cpu_ms_per_task = meter.per_task_ms(run.count)
    return run


async def measure_all(systems: list[System], opts: Options) -> dict[str, dict[int, list[Run]]]:
    """Warm every system up, then ``opts.rounds`` rounds of every level and system."""
    for system in systems:
        await system.loop(opts.warmup, 16, opts.max_s)
    runs: dict[str, dict[int, list[Run]]] = {s.name: {lv: [] for lv in LEVELS} for s in systems}
    for round_ in range(opts.rounds):
        console.print(f"round {round_ + 1} of {opts.rounds}")
        order = systems if round_ % 2 == 0 else systems[::-1]
        for level in LEVELS:
            for system in order:
                run = await measure(system, level, opts, profile=round_ == 0)
                runs[system.name][level].append(run)
                _print_run(system.name, level, run)
    return runs


def median_run(runs: list[Run]) -> Run:
    """The run of median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.tasks_per_s)[(len(runs) - 1) // 2]


def _server_cpu_ms_per_task(r: Run) -> float:
    """CPU ms per task of the nats-server(s): every ``nats-*`` process summed."""
    servers = [v for k, v in r.cpu_ms_per_task.items() if k.startswith("nats-")]
    return sum(servers) if servers else float("nan")


_MEASURES: tuple[tuple[str, str, Callable[[Run], float]], ...] = (
    ("tasks/s", "", lambda r: r.tasks_per_s),
    ("p50 ms", "_p50_latency", lambda r: r.p_ms(50)),
    ("p99 ms", "_p99_latency", lambda r: r.p_ms(99)),
    ("CPU ms/task", "_cpu_ms_per_task_total", lambda r: sum(r.cpu_ms_per_task.values())),
    ("server CPU ms/task", "_cpu_ms_per_task_nats_server", _server_cpu_ms_per_task),
)


def compare_rows(
    a: dict[int, list[Run]],
    b: dict[int, list[Run]],
    rep: Report,
    *,
    key: str,
    labels: tuple[str, str],
    title: str,
) -> dict[int, float]:
    """Row ``a`` / row ``b`` of the same rounds, per level and measure, as a table.

    A ratio is the median of the per-round ratios (the rounds ran back to back, so a
    change in the machine's load moves both sides alike). Figures:
    ``<key>_inflight<N><measure>_ratio`` and its ``_min`` and ``_max`` over the rounds,
    where the throughput's measure is empty (``<key>_inflight64_ratio``) and the others
    are ``_p50_latency``, ``_p99_latency``, ``_cpu_ms_per_task_total`` and
    ``_cpu_ms_per_task_nats_server`` (every ``nats-*`` process summed). ``labels``:
    the names of ``a`` and ``b`` in the table.

    Returns:
        The tasks/s ratio by level.
    """
    rows: list[list[object]] = []
    throughput: dict[int, float] = {}
    for level in sorted(set(a) & set(b)):
        for label, suffix, value in _MEASURES:
            per_round = [
                value(x) / value(y) if value(y) else float("nan")
                for x, y in zip(a[level], b[level], strict=True)
            ]
            ratio = statistics.median(per_round)
            name = f"{key}_inflight{level}{suffix}_ratio"
            rep.add(name, round(ratio, 3))
            rep.add(f"{name}_min", round(min(per_round), 3))
            rep.add(f"{name}_max", round(max(per_round), 3))
            a_median = statistics.median(value(r) for r in a[level])
            b_median = statistics.median(value(r) for r in b[level])
            rows.append([level, label, b_median, a_median, ratio, min(per_round), max(per_round)])
            if not suffix:
                throughput[level] = ratio
    a_label, b_label = labels
    columns = ["in flight", "measure", b_label, a_label, f"{a_label}/{b_label}", "min", "max"]
    rep.table(title, columns, rows)
    return throughput


class _Profiling:
    """py-spy on ``procs`` and pyinstrument on this process while a block runs."""

    def __init__(self, name: str, level: int, out: Path | None, procs: list[Child]) -> None:
        self.name, self.level, self.out, self.procs = name, level, out, procs
        self.spies: list[subprocess.Popen[bytes]] = []
        self.profiler: Any = None

    def __enter__(self) -> None:
        if self.out is None or not self.procs:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for child in self.procs:
            out = self.out / f"{self.name}-inflight{self.level}-{child.name}.folded"
            cmd = [
                _py_spy(),
                "record",
                "-p",
                str(child.pid),
                "-o",
                str(out),
                "-r",
                "250",
                "-f",
                "raw",
            ]
            self.spies.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        from pyinstrument import Profiler

        self.profiler = Profiler(async_mode="enabled")
        self.profiler.start()
        time.sleep(0.5)  # let py-spy attach

    def __exit__(self, *exc: object) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            assert self.out is not None
            text = self.profiler.output_text(unicode=True, show_all=False)
            (self.out / f"{self.name}-inflight{self.level}-caller.txt").write_text(text)
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def _py_spy() -> str:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else (shutil.which("py-spy") or "py-spy")
