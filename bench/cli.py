"""``just bench cli``: how soon ``agentbus`` commands print, against a running stack.

One run, one machine. Starts ``agentbus embedded --runtime process`` (authentication
on, the default) in a temporary ``AGENTBUS_HOME``, so every command finds the stack
and its operator creds as a user's shell would; then runs each command ``--runs``
times in turn, each a fresh process: wall time to the first byte on stdout, wall
time to exit, and the CPU the process used (user + system). Medians and maxima.

Rows: ``agentbus --help`` (no command module imported), ``agentbus tasks --help``
(one command module), the listings ``agentbus nodes``, ``tasks`` and ``ps`` (connect
with creds, one request, a table), and ``celery --help`` as a peer. The row "nodes,
no aiohttp" runs ``agentbus nodes`` with ``aiohttp`` made unimportable: nats-py
imports aiohttp (for websockets) whenever it is installed, and in this workspace it
is, for the supervisor's aiodocker; an install of the CLI alone has none.

Usage: ``just bench cli [--runs N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._procs import Child, children
from bench.common import Report, console, percentile, versions

BIN = Path(sys.executable).parent
AGENTBUS = str(BIN / "agentbus")
NO_AIOHTTP = (
    "import sys; sys.modules['aiohttp'] = None; sys.argv[0] = 'agentbus'; "
    "from agentbus.cli import main; main()"
)
ROWS: dict[str, tuple[str, list[str]]] = {
    "help": ("agentbus --help", [AGENTBUS, "--help"]),
    "tasks_help": ("agentbus tasks --help", [AGENTBUS, "tasks", "--help"]),
    "nodes": ("agentbus nodes", [AGENTBUS, "nodes"]),
    "tasks": ("agentbus tasks", [AGENTBUS, "tasks"]),
    "ps": ("agentbus ps", [AGENTBUS, "ps"]),
    "nodes_no_aiohttp": ("agentbus nodes, no aiohttp", [sys.executable, "-c", NO_AIOHTTP, "nodes"]),
    "celery_help": ("celery --help (peer)", [str(BIN / "celery"), "--help"]),
}
"""Row key -> label and command line."""
TARGETS = {"help": ("exit", 0.3), "nodes": ("first", 0.5), "tasks": ("first", 0.5)}
"""Issue 15's CLI targets: row -> (figure, seconds)."""


@dataclass(frozen=True)
class Sample:
    """One run of one command."""

    first_s: float
    exit_s: float
    cpu_s: float


def run_once(argv: list[str], env: dict[str, str]) -> Sample:
    """Run ``argv`` to its end; raise if it fails.

    Raises:
        RuntimeError: the command exited non-zero.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first_s = time.perf_counter() - start
    _, err = proc.communicate()
    exit_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err.decode()[-500:]}")
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Sample(first_s, exit_s, cpu_s)


def wait_ready(env: dict[str, str], stack: Child, timeout_s: float = 120.0) -> None:
    """Block until ``agentbus ping`` finds all five services of the stack.

    Raises:
        RuntimeError: the stack exited or was not ready in ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check()
        if subprocess.run([AGENTBUS, "ping"], env=env, capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"stack not ready in {timeout_s} s:\n{stack.tail()}")
        time.sleep(0.2)


def measure(runs: int, rep: Report) -> None:
    """Start a stack, time every row ``runs`` times (rows interleaved), report."""
    samples: dict[str, list[Sample]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, children() as started:
        env = {**os.environ, "AGENTBUS_HOME": tmp}
        for name in ("AGENTBUS_NATS_URL", "AGENTBUS_PREFIX", "AGENTBUS_CREDS_FILE"):
            env.pop(name, None)
        stack = Child("embedded", [AGENTBUS, "embedded", "--runtime", "process"], Path(tmp), env)
        started.append(stack)
        wait_ready(env, stack)
        for _, argv in ROWS.values():  # warm the page cache and .pyc files
            run_once(argv, env)
        for _ in range(runs):
            for row, (_, argv) in ROWS.items():
                samples[row].append(run_once(argv, env))
    table = []
    for row, got in samples.items():
        for figure in ("first_s", "exit_s", "cpu_s"):
            values = [getattr(s, figure) for s in got]
            rep.add(f"{row}_{figure[:-2]}_p50_s", round(percentile(values, 50), 4))
            rep.add(f"{row}_{figure[:-2]}_max_s", round(max(values), 4))
        p50 = {f: percentile([getattr(s, f) for s in got], 50) for f in ("first_s", "exit_s")}
        target = ""
        if row in TARGETS:
            figure, limit_s = TARGETS[row]
            ok = p50[f"{figure}_s"] <= limit_s
            target = f"{figure} ≤ {limit_s} s: {'met' if ok else 'missed'}"
        table.append(
            [
                ROWS[row][0],
                p50["first_s"],
                max(s.first_s for s in got),
                p50["exit_s"],
                percentile([s.cpu_s for s in got], 50),
                target,
            ]
        )
    rep.table(
        f"CLI, {runs} runs each (seconds)",
        ["command", "first output p50", "first max", "exit p50", "CPU p50", "target"],
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="just bench cli", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--runs", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    rep = Report("cli")
    rep.print_header(**versions("agentbus-runtime", "typer", "nats-py", "celery"))
    with os.popen("uptime") as uptime:
        console.print(f"  load: {uptime.read().strip()}")
    measure(max(args.runs, 1), rep)
    rep.write_json(args.json)


if __name__ == "__main__":
    main()
