"""What every benchmark shares: machine facts, percentiles, the table and ``--json`` output.

A benchmark collects figures into a ``Report``: ``report.add("agentbus_64_tasks_per_s",
812.3)``. Keys are flat, snake_case and carry their unit (``_s``, ``_ms``, ``_per_s``,
``_bytes``, ``_count``, ``_ratio``). ``Report.write_json`` writes them all, plus the
machine facts under ``machine_*``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear interpolation (NumPy's default).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of ``dists`` (``"missing"`` for any not installed)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def machine() -> dict[str, str | int]:
    """Facts printed with every benchmark: cores, CPU model, Python, OS."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores_count": os.cpu_count() or 0,
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


@dataclass
class Report:
    """Figures of one benchmark run, printed as tables and written as flat JSON."""

    name: str
    figures: dict[str, float | int | str] = field(default_factory=dict)

    def add(self, key: str, value: float | int | str) -> None:
        """Record one figure; ``key`` must carry its unit, e.g. ``p50_latency_ms``."""
        self.figures[key] = value

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Print a rich table (figures still go through ``add`` for the JSON)."""
        t = Table(title=title)
        for c in columns:
            t.add_column(c, justify="right" if c != columns[0] else "left")
        for row in rows:
            t.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row))
        console.print(t)

    def print_header(self, **versions_: str) -> None:
        """Print the machine facts and the versions measured."""
        m = machine()
        console.print(
            f"[bold]{self.name}[/bold]: {m['cores_count']} cores, {m['cpu_model']}, "
            f"Python {m['python']}"
        )
        for k, v in versions_.items():
            console.print(f"  {k} {v}")
            self.add(f"version_{k.replace('-', '_')}", v)

    def write_json(self, path: Path | None) -> None:
        """Write every figure and the machine facts to ``path`` (if given) as one object."""
        if path is None:
            return
        data = {f"machine_{k}": v for k, v in machine().items()} | self.figures
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        console.print(f"figures written to {path}")


async def closed_loops(
    callers: int, total: int, op: Callable[[int, int], Awaitable[None]]
) -> tuple[list[float], float]:
    """Run ``op(caller, i)`` ``total`` times over ``callers`` closed loops at once.

    Each loop runs ``total // callers`` operations (at least one). Returns every
    operation's latency (ms) and the wall time of the whole (s).
    """
    per_caller = max(1, total // callers)
    latencies: list[float] = []

    async def loop(caller: int) -> None:
        for i in range(per_caller):
            t = time.perf_counter()
            await op(caller, i)
            latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in range(callers)))
    return latencies, time.perf_counter() - start
