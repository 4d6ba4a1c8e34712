"""The review demo: a fleet of ``reviewer`` agents computes metrics of Python files.

``agentbus demo review [PATH]`` uses a reachable stack (``AGENTBUS_NATS_URL``, the
embedded state file) or starts an ``EmbeddedStack`` for its own duration, deploys
``reviewer`` replicas, submits one ``review`` task per ``*.py`` file under PATH (the
file's bytes travel over the bus; large ones through the Object Store), follows
them with a progress bar and prints a summary. See ``agentbus.agents.reviewer``.

``--stigmergy`` gives the same agents no task list: each walks the tree itself and
they coordinate through traces (``agentbus.demo_stigmergy``); ``--no-traces`` makes
them ignore each other; ``--compare`` runs the three modes one after the other and
prints coverage, duplicate reviews and wall time side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentbus.agents.reviewer import FileReport, ReviewFile, python_files
from agentbus.cli_connect import connect_client
from agentbus.client import Client, new_task_id
from agentbus.demo_runtime import RuntimeChoice, choose_runtime
from agentbus.embedded import EmbeddedStack, ping_services
from agentbus.errors import AgentBusError, ContractError, UnavailableError
from agentbus.messages import Deployment, TaskRecord
from agentbus.settings import BusSettings

DEFAULT_IMAGE = "agentbus/agent:dev"
DEPLOYMENT = "reviewer"
CAPABILITY = "review"
Mode = Literal["queue", "stigmergy", "no-traces"]
MODES: tuple[Mode, ...] = ("queue", "stigmergy", "no-traces")
__all__ = ["MODES", "Mode", "ReviewResult", "python_files", "review"]


@dataclass
class ReviewResult:
    """What the demo found: one report per file (sorted by path) and a summary."""

    root: str
    runtime: str
    replicas: int
    reports: list[FileReport] = field(default_factory=list)
    wall_s: float = 0.0
    mode: Mode = "queue"
    files_total: int = 0
    """``*.py`` files in the tree."""
    reviewed: int = 0
    """Files some agent reviewed (at least once)."""
    reviews: int = 0
    """Reviews made in all (a file reviewed twice counts twice)."""
    hot_spots: list[tuple[str, float]] = field(default_factory=list)
    """Files with the most TODOs: from ``found_todo`` traces (stigmergy), else reports."""

    @property
    def ok(self) -> int:
        """Files reviewed successfully."""
        return sum(r.status == "ok" for r in self.reports)

    @property
    def errors(self) -> int:
        """Files that could not be reviewed (undecodable, unparsable, task failed)."""
        return len(self.reports) - self.ok

    def summary(self) -> dict[str, Any]:
        """Counts and timing of the run, as a JSON-ready dict.

        ``files``, ``ok``, ``errors``, ``wall_s``, ``files_per_s``; and ``mode``,
        ``files_total``, ``files_reviewed``, ``coverage_ratio``, ``reviews``,
        ``duplicate_reviews`` (reviews beyond one per reviewed file), ``hot_spots``.
        """
        n = len(self.reports)
        hot = self.hot_spots or [(r.path, float(r.todos or 0)) for r in self.top_by_todos()]
        return {
            "root": self.root,
            "runtime": self.runtime,
            "replicas": self.replicas,
            "mode": self.mode,
            "files": n,
            "ok": self.ok,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "files_per_s": round(n / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            "files_total": self.files_total,
            "files_reviewed": self.reviewed,
            "coverage_ratio": round(self.reviewed / self.files_total, 4)
            if self.files_total
            else 1.0,
            "reviews": self.reviews,
            "duplicate_reviews": max(0, self.reviews - self.reviewed),
            "hot_spots": [{"path": p, "todos": round(s, 3)} for p, s in hot],
        }

    def top_by_todos(self, n: int = 10) -> list[FileReport]:
        """The ``n`` files with the most TODOs (ties by path), none without."""
        todo = [r for r in self.reports if r.todos]
        return sorted(todo, key=lambda r: (-(r.todos or 0), r.path))[:n]

    def top_by_functions(self, n: int = 10) -> list[FileReport]:
        """The ``n`` files with the most functions (ties by path)."""
        ok = [r for r in self.reports if r.status == "ok"]
        return sorted(ok, key=lambda r: (-(r.functions or 0), r.path))[:n]

    def to_json(self) -> bytes:
        """``{"files": [FileReport, ...], "summary": {...}}`` as indented JSON."""
        doc = {"files": self.reports, "summary": self.summary()}
        return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


async def _stack_answers(settings: BusSettings) -> Client | None:
    """A client on ``settings`` if its scheduler answers ``$SRV.PING``, else None."""
    try:
        client = await connect_client(settings, timeout_s=3.0)
    except UnavailableError:
        return None
    if "scheduler" in await ping_services(client.bus.nc, prefix=settings.prefix, wait_s=0.5):
        return client
    await client.close()
    return None


@contextlib.asynccontextmanager
async def _stack(
    settings: BusSettings, requested: RuntimeChoice, image: str, console: Console
) -> AsyncIterator[tuple[Client, set[str]]]:
    """Yield a client and the runtimes to deploy for: an existing stack or a new one."""
    if (client := await _stack_answers(settings)) is not None:
        nodes = await client.nodes()
        if not nodes:
            await client.close()
            raise UnavailableError(f"the stack at {settings.nats_url} has no node (supervisor)")
        kinds: set[str] = {n.runtime for n in nodes}
        listed = ", ".join(f"{n.node_id}={n.runtime}" for n in nodes)
        console.print(f"stack: existing, at {settings.nats_url} (prefix {settings.prefix})")
        console.print(f"runtime: {', '.join(sorted(kinds))} (the stack's nodes: {listed})")
        try:
            yield client, kinds
        finally:
            await client.close()
        return
    runtime, why = await choose_runtime(requested, image)
    console.print(f"stack: none answers at {settings.nats_url}; starting an embedded stack")
    console.print(f"runtime: {runtime} ({why})")
    stack = EmbeddedStack(runtime=runtime)  # type: ignore[arg-type]
    with console.status("starting nats-server and the five services"):
        await stack.start()
    try:
        console.print(f"embedded stack: {stack.nats_url}, gateway {stack.gateway_url}")
        client = await connect_client(stack.settings)
        try:
            yield client, {runtime}
        finally:
            await client.close()
    finally:
        with console.status("stopping the embedded stack"):
            await stack.stop()


async def _wait_agents(
    client: Client, replicas: int, timeout_s: float, capability: str = CAPABILITY
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (n := len(await client.agents(capability))) < replicas:
        if loop.time() > deadline:
            raise UnavailableError(
                f"only {n} of {replicas} {capability!r} agents registered "
                f"within {timeout_s:.0f} s: see the supervisor's log"
            )
        await asyncio.sleep(0.3)


async def _wait_gone(client: Client, timeout_s: float, capability: str = CAPABILITY) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with contextlib.suppress(AgentBusError):
        while loop.time() < deadline:
            agents = await client.agents(capability)
            if not any(a.deployment == DEPLOYMENT for a in agents):
                return
            await asyncio.sleep(0.3)


async def _report(client: Client, record: TaskRecord, path: str) -> FileReport:
    if record.status == "succeeded":
        try:
            return await client.output(record, FileReport)
        except AgentBusError as exc:
            return FileReport(path=path, status="error", error=f"bad output: {exc}")
    reason = record.error.message if record.error else ""
    error = f"task {record.status}" + (f": {reason}" if reason else "")
    return FileReport(path=path, status="error", error=" ".join(error.split()))


async def review(
    path: Path | None = None,
    *,
    settings: BusSettings | None = None,
    replicas: int = 4,
    runtime: RuntimeChoice = "auto",
    image: str = DEFAULT_IMAGE,
    json_path: Path | None = None,
    console: Console | None = None,
    timeout_s: float = 3600.0,
    agents_timeout_s: float = 120.0,
    mode: Mode = "queue",
    compare: bool = False,
) -> list[ReviewResult]:
    """Run the review demo over ``path`` (default: the running interpreter's stdlib).

    ``mode``: ``queue`` (one task per file), ``stigmergy`` (walkers and traces) or
    ``no-traces`` (walkers without traces); ``compare`` runs all three in turn. The
    walker modes need agents that can read ``path``: local processes.

    Returns:
        One result per mode run.

    Raises:
        ContractError: ``path`` is not a directory, ``replicas`` < 1, or a walker mode
            on a stack without process nodes.
        UnavailableError: no stack and none could be started, or agents never came.
        RequestTimeoutError: the tasks did not all finish within ``timeout_s``.
    """
    console = console or Console()
    root = (Path(path) if path is not None else Path(sysconfig.get_paths()["stdlib"])).resolve()
    if not root.is_dir():
        raise ContractError(f"{root} is not a directory")
    if replicas < 1:
        raise ContractError("--replicas must be at least 1")
    modes: tuple[Mode, ...] = MODES if compare else (mode,)
    walking = any(m != "queue" for m in modes)
    if walking and runtime == "docker":
        raise ContractError("--stigmergy walkers read PATH themselves: use --runtime process")
    files = python_files(root)
    console.print(f"review: {len(files)} Python files under {root}")
    settings = settings or BusSettings()
    results = []
    start_runtime: RuntimeChoice = "process" if walking else runtime
    async with _stack(settings, start_runtime, image, console) as (client, kinds):
        if walking and "process" not in kinds:
            raise ContractError(
                "--stigmergy walkers read PATH themselves: the stack needs a process node"
            )
        for m in modes:
            console.rule(f"mode: {m}")
            result = ReviewResult(root=str(root), runtime="+".join(sorted(kinds)),
                                  replicas=replicas, mode=m, files_total=len(files))  # fmt: skip
            await _deploy_and_run(client, kinds, result, files, image, console, timeout_s,
                                  agents_timeout_s)  # fmt: skip
            print_summary(result, console)
            results.append(result)
    if compare:
        print_comparison(results, console)
    if json_path is not None:
        data = results[0].to_json() if len(results) == 1 else comparison_json(results)
        await asyncio.to_thread(json_path.write_bytes, data)
        console.print(f"wrote {json_path}")
    return results


async def _deploy_and_run(
    client: Client,
    kinds: set[str],
    result: ReviewResult,
    files: list[tuple[str, Path]],
    image: str,
    console: Console,
    timeout_s: float,
    agents_timeout_s: float,
) -> None:
    """Deploy the reviewers for ``result.mode``, run it, remove the deployment."""
    walking = result.mode != "queue"
    capability = "review-tree" if walking else CAPABILITY
    deployment = Deployment(
        name=DEPLOYMENT,
        replicas=result.replicas,
        capabilities=[capability],
        image=image if "docker" in kinds and not walking else None,
        command=[sys.executable, "-m", "agentbus.agents.reviewer"] if "process" in kinds else None,
    )
    await client.deploy(deployment)
    try:
        with console.status(f"waiting for {result.replicas} reviewer agents"):
            await _wait_agents(client, result.replicas, agents_timeout_s, capability)
        console.print(f"agents: {result.replicas} reviewers registered")
        if walking:
            await _run_walkers(client, result, console, timeout_s)
        else:
            result.reports = await _run_tasks(client, files, console, result, timeout_s)
    finally:
        with contextlib.suppress(AgentBusError):
            await client.delete_deployment(DEPLOYMENT)
            await _wait_gone(client, 20.0, capability)


async def _run_walkers(
    client: Client, result: ReviewResult, console: Console, timeout_s: float
) -> None:
    from agentbus.demo_stigmergy import run_walkers

    started = time.perf_counter()
    outcome = await run_walkers(client, Path(result.root), replicas=result.replicas,
                                use_traces=result.mode == "stigmergy", console=console,
                                timeout_s=timeout_s)  # fmt: skip
    result.wall_s = time.perf_counter() - started
    result.reports = outcome.unique()
    result.reviewed = len(result.reports)
    result.reviews = len(outcome.reviews)
    result.hot_spots = outcome.hot_spots
    for failed in outcome.failed_walkers:
        console.print(f"[red]walker failed[/red] {failed}", highlight=False)


async def _run_tasks(
    client: Client,
    files: list[tuple[str, Path]],
    console: Console,
    result: ReviewResult,
    timeout_s: float,
) -> list[FileReport]:
    started = time.perf_counter()
    tasks, paths = [], {}
    for rel, full in files:
        content = await asyncio.to_thread(full.read_bytes)
        task_id = new_task_id()
        tasks.append(
            await client.task(CAPABILITY, ReviewFile(path=rel, content=content), task_id=task_id)
        )
        paths[task_id] = rel
    await client.submit_many(tasks)
    reports: list[FileReport] = []
    columns = (TextColumn("reviewing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("review", total=len(tasks))
        async for record in client.wait_many(list(paths), timeout_s=timeout_s):
            reports.append(await _report(client, record, paths[record.task_id]))
            result.reviewed += record.status == "succeeded"
            result.reviews += len(record.attempts)  # every delivery started a review
            progress.advance(bar)
    result.wall_s = time.perf_counter() - started
    return sorted(reports, key=lambda r: r.path)


def print_summary(result: ReviewResult, console: Console) -> None:
    """Print the counts, timing and the ten files with the most functions."""
    s = result.summary()
    console.print(
        f"files: {s['files']}  ok: {s['ok']}  errors: {s['errors']}  "
        f"wall: {s['wall_s']:.2f} s  rate: {s['files_per_s']} files/s  "
        f"({s['replicas']} replicas, {s['runtime']})"
    )
    console.print(
        f"mode: {s['mode']}  coverage: {s['coverage_ratio']:.1%} "
        f"({s['files_reviewed']}/{s['files_total']} files reviewed)  "
        f"duplicate reviews: {s['duplicate_reviews']}",
        highlight=False,
    )
    if result.hot_spots:
        console.print("hot spots (found_todo traces): " + ", ".join(
            f"{p} ({v:.3g})" for p, v in result.hot_spots[:5]), highlight=False)  # fmt: skip
    table = Table(title="most functions")
    for col, justify in (("file", "left"), ("functions", "right"), ("classes", "right"),
                         ("lines", "right"), ("todos", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in result.top_by_functions():
        table.add_row(r.path, str(r.functions), str(r.classes), str(r.lines), str(r.todos))
    console.print(table)
    for r in [r for r in result.reports if r.status == "error"][:10]:
        console.print(f"[red]error[/red] {r.path}: {r.error}", highlight=False)


def print_comparison(results: list[ReviewResult], console: Console) -> None:
    """Print coverage, duplicate reviews and wall time of each mode side by side."""
    table = Table(title=f"review modes, {results[0].replicas} agents, "
                        f"{results[0].files_total} files")  # fmt: skip
    for col in ("mode", "coverage", "reviewed", "reviews", "duplicates", "wall s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in results:
        s = r.summary()
        cells = (f"{s['coverage_ratio']:.1%}", s["files_reviewed"], s["reviews"],
                 s["duplicate_reviews"], f"{s['wall_s']:.2f}")  # fmt: skip
        table.add_row(s["mode"], *(str(c) for c in cells))
    console.print(table)


def comparison_json(results: list[ReviewResult]) -> bytes:
    """``{"comparison": [summary, ...]}`` (one summary per mode) as indented JSON."""
    doc = {"comparison": [r.summary() for r in results]}
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
