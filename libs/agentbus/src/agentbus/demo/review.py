"""The review demo: a fleet of ``reviewer`` agents computes metrics of Python files.

``agentbus demo review [PATH]`` uses a reachable stack (``AGENTBUS_NATS_URL``, the
embedded state file) or starts an ``EmbeddedStack`` for its own duration, deploys
``reviewer`` replicas, submits one ``review`` task per ``*.py`` file under PATH (the
file's bytes travel over the bus; large ones through the Object Store), follows
them with a progress bar and prints a summary. See ``agentbus.agents.reviewer``.
Each reviewer also publishes a ``review.file_reviewed`` event per file; a
``summarizer`` deployment (one replica) adds them up, its totals are shown live
beside the bar and must equal, at the end, those computed from the task outputs
(``agentbus.demo.live``; a difference fails the demo).

``--stigmergy`` gives the same agents no task list: each walks the tree itself and
they coordinate through traces (``agentbus.demo.stigmergy``); ``--no-traces`` makes
them ignore each other; ``--compare`` runs the three modes one after the other and
prints coverage, duplicate reviews and wall time side by side (``agentbus.demo.report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule

from agentbus.agents.reviewer import (
    FILE_REVIEWED,
    TRACE_KINDS,
    FileReport,
    ReviewFile,
    python_files,
)
from agentbus.cli.connect import connect_client
from agentbus.client import Client, new_task_id
from agentbus.demo.live import LiveTotals, describe
from agentbus.demo.report import (
    MODES,
    Mode,
    ReviewResult,
    comparison_json,
    print_comparison,
    print_summary,
)
from agentbus.demo.runtime import RuntimeChoice, choose_runtime
from agentbus.embedded import EmbeddedStack, ping_services
from agentbus.errors import AgentBusError, ContractError, UnavailableError
from agentbus.messages import Deployment, TaskRecord
from agentbus.settings import BusSettings

DEFAULT_IMAGE = "agentbus/agent:dev"
DEPLOYMENT = "reviewer"
CAPABILITY = "review"
FINAL_WAIT_S = 30.0
"""How long the summarizer may take, after the last task, to count every file."""
__all__ = ["MODES", "Mode", "ReviewResult", "python_files", "review"]


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
            console.print(Rule(f"mode: {m}"), width=min(console.width, 100))
            result = ReviewResult(
                root=str(root),
                runtime="+".join(sorted(kinds)),
                replicas=replicas,
                mode=m,
                files_total=len(files),
            )
            await _deploy_and_run(
                client, kinds, result, files, image, console, timeout_s, agents_timeout_s
            )
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
        publishes=[FILE_REVIEWED],  # what its credentials allow it to publish
        trace_kinds=list(TRACE_KINDS) if walking else [],
    )
    live = None if walking else LiveTotals(client, image=image, kinds=kinds)
    await client.deploy(deployment)
    try:
        if live is not None:
            with console.status("waiting for the summarizer agent"):
                await live.deploy(agents_timeout_s)
            console.print("agents: summarizer answering (live totals from events)")
        with console.status(f"waiting for {result.replicas} reviewer agents"):
            await _wait_agents(client, result.replicas, agents_timeout_s, capability)
        console.print(f"agents: {result.replicas} reviewers registered")
        if walking:
            await _run_walkers(client, result, console, timeout_s)
        else:
            assert live is not None
            result.reports = await _run_tasks(client, files, console, result, timeout_s, live)
            result.summarizer_totals = (
                await live.check(result.reports, console, FINAL_WAIT_S)
            ).figures()
    finally:
        if live is not None:
            await live.remove()
        with contextlib.suppress(AgentBusError):
            await client.delete_deployment(DEPLOYMENT)
            await _wait_gone(client, 20.0, capability)


async def _run_walkers(
    client: Client, result: ReviewResult, console: Console, timeout_s: float
) -> None:
    from agentbus.demo.stigmergy import run_walkers

    started = time.perf_counter()
    outcome = await run_walkers(
        client,
        Path(result.root),
        replicas=result.replicas,
        use_traces=result.mode == "stigmergy",
        console=console,
        timeout_s=timeout_s,
    )
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
    live: LiveTotals,
) -> list[FileReport]:
    started = time.perf_counter()
    tasks, paths = [], {}
    for rel, full in files:
        content = await asyncio.to_thread(full.read_bytes)
        task_id = new_task_id()
        job = ReviewFile(path=rel, content=content, run=live.run)
        tasks.append(await client.build_task(CAPABILITY, job, task_id=task_id))
        paths[task_id] = rel
    await client.submit_many(tasks)
    reports: list[FileReport] = []
    columns = (
        TextColumn("reviewing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("summarizer: {task.fields[live]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("review", total=len(tasks), live=describe(live.latest))
        following = asyncio.create_task(
            live.follow(lambda totals: progress.update(bar, live=describe(totals)))
        )
        try:
            async for record in client.wait_many(list(paths), timeout_s=timeout_s):
                reports.append(await _report(client, record, paths[record.task_id]))
                result.reviewed += record.status == "succeeded"
                result.reviews += len(record.attempts)  # every delivery started a review
                progress.advance(bar)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        # the summarizer may still be adding up the last events: show where it ends
        progress.update(bar, live=describe(await live.final(len(reports), FINAL_WAIT_S)))
    result.wall_s = time.perf_counter() - started
    return sorted(reports, key=lambda r: r.path)
