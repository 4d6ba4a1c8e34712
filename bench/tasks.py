"""``just bench tasks``: task throughput and latency of agentbus, raw JetStream and Celery.

One run, one machine, closed loops (each of N callers submits a task, waits for its
result, submits the next), at 1 and 64 tasks in flight:

``raw``
    the ceiling: nats-py alone. Publish-with-ack to a WorkQueue stream (file storage)
    → a worker process pulling batches → ack → core-NATS reply to the caller.
``agentbus``
    ``Client.submit`` → the scheduler (``python -m agentbus_scheduler``) records and
    enqueues the task → a no-op agent process (``agentbus.agents.echo``) runs it and
    reports → the scheduler applies the result → ``Client.wait`` returns the record.
``agentbus-auth``
    the same with NATS auth on (``bench/_auth_fleet.py``): its own nats-server trusting
    a fresh operator, the scheduler with its service creds, the agent with creds minted
    from its deployment (consumers provisioned by an operator connection), the caller
    with the gateway's service creds.
``celery``
    Celery 5, Redis broker and result backend (``/usr/bin/redis-server`` on a free
    loopback port, no persistence), one worker process with the solo pool; the caller
    keeps N results pending with ``AsyncResult.then`` and drains the result consumer.

raw and agentbus share one nats-server (file storage); agentbus-auth has its own, started
the same way with the auth configuration added. Every service and agent logs at
WARNING, as does the Celery worker. Latency is submit → result in the caller.

**Rounds.** All systems are started and warmed up first; then each round runs, per
level, every system's loop back to back (idle systems cost nothing), ``--rounds``
times; every other round runs the systems in reverse order, so that agentbus and
agentbus-auth alternate which goes first. A system's figures are those of its median
round (by tasks/s), and a ratio is the median of the per-round ratios, so a change in
the load of a shared machine between two systems' loops moves both sides of a ratio
alike.

Usage: ``just bench tasks [--json FILE] [--tasks N] [--rounds N] [--only
raw,agentbus,celery] [--auth both|on|off] [--profile DIR]``. ``--auth``: the agentbus
row with auth off, on, or both (default). ``--profile``: py-spy folded stacks of the
scheduler and the agent, for speedscope or flamegraph.pl, and a pyinstrument report of
the caller, for the agentbus runs of the first round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from agentbus.auth.authority import AuthDir
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import NotFoundError, UnavailableError
from agentbus.messages import GetTask, TaskReply
from agentbus.settings import BusSettings
from bench._auth_fleet import (
    AGENT_ID,
    DEPLOYMENT,
    Identities,
    auth_nats_server,
    compare,
    provision,
    record_identities,
)
from bench._loops import LEVELS, Options, Run, System, closed_loop, measure_all, median_run
from bench._procs import Child, children, free_port, tool_version, wait_port
from bench.common import Report, console, versions
from tests._harness.nats_server import NatsServer, nats_server_binary

SYSTEMS = ("raw", "agentbus", "celery")
AUTH_MODES = ("both", "on", "off")
AUTH = "agentbus-auth"
PREFIX = "bench"
QUIET = {"AGENTBUS_LOG_LEVEL": "WARNING"}


# -- raw ceiling ------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def raw_system(url: str, nats_pid: int, opts: Options) -> AsyncIterator[System]:
    nc = await nats.connect(url, name="bench-raw-caller")
    js = nc.jetstream()
    stream, subject, replies = "RAWBENCH", "rawbench.tasks", "rawbench.replies"
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    await js.add_consumer(
        stream,
        ConsumerConfig(
            name="raw",
            durable_name="raw",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=-1,
        ),
    )
    loop = asyncio.get_running_loop()
    waiters: dict[bytes, asyncio.Future[None]] = {}

    async def on_reply(msg: Any) -> None:
        fut = waiters.pop(msg.data, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    await nc.subscribe(replies, cb=on_reply)
    seq = 0

    async def one() -> None:
        nonlocal seq
        seq += 1
        key = str(seq).encode()
        waiters[key] = fut = loop.create_future()
        await js.publish(subject, key)
        await asyncio.wait_for(fut, 30)

    try:
        with children() as kids:
            cmd = [sys.executable, "-m", "bench._raw_worker", url, stream, "raw", replies]
            kids.append(Child("raw-worker", cmd, opts.log_dir, {}))
            pids = {"nats-server": nats_pid, "worker": kids[-1].pid}
            yield System("raw", functools.partial(closed_loop, one), pids)
    finally:
        await nc.close()


# -- agentbus -----------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def agentbus_system(
    url: str,
    server_pids: dict[str, int],
    opts: Options,
    identities: Identities | None = None,
    *,
    name: str | None = None,
) -> AsyncIterator[System]:
    """The agentbus row; with ``identities``, the agentbus-auth row (each process as itself).

    A scheduler and an echo agent (prefix ``PREFIX``) on the server(s) at ``url``, whose
    processes ``server_pids`` (name -> pid) count for CPU; ``name`` names the row
    (default ``agentbus`` or ``agentbus-auth``). ``System.one`` runs one task.
    """
    name = name or ("agentbus" if identities is None else AUTH)
    env = {"AGENTBUS_NATS_URL": url, "AGENTBUS_PREFIX": PREFIX, **QUIET}
    agent_env = {"AGENTBUS_AGENT_MAX_CONCURRENCY": "256"}
    if identities is not None:
        agent_env |= {
            "AGENTBUS_CREDS_FILE": str(identities.agent),
            "AGENTBUS_AGENT_ID": AGENT_ID,
            "AGENTBUS_AGENT_DEPLOYMENT": DEPLOYMENT.name,
        }
    scheduler_env = {} if identities is None else {"AGENTBUS_CREDS_FILE": str(identities.scheduler)}
    with children() as kids:
        kids.append(
            Child(
                f"{name}-scheduler",
                [sys.executable, "-m", "agentbus_scheduler"],
                opts.log_dir,
                env | scheduler_env,
            )
        )
        kids.append(
            Child(
                f"{name}-agent",
                [sys.executable, "-m", "agentbus.agents.echo"],
                opts.log_dir,
                env | agent_env,
            )
        )
        caller = BusSettings(
            nats_url=url,
            prefix=PREFIX,
            creds_file=None if identities is None else identities.caller,
        )
        bus = await Bus.connect(caller, name=f"bench-{name}-caller")
        try:
            await _scheduler_ready(bus, kids)
            client = Client(bus)
            failed = 0

            async def one() -> None:
                nonlocal failed
                record = await client.submit("echo", 1)
                done = await client.wait(record.task_id, timeout_s=60)
                failed += done.status != "succeeded"

            pids = server_pids | {k.name.removeprefix(f"{name}-"): k.pid for k in kids}
            yield System(name, functools.partial(closed_loop, one), pids, list(kids), one)
            if failed:
                console.print(f"[red]{name}: {failed} tasks did not succeed")
        finally:
            await bus.close()


async def _scheduler_ready(bus: Bus, kids: list[Child], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for kid in kids:
            kid.check()
        try:
            await bus.request(
                bus.names.endpoint("scheduler", "get"), GetTask(task_id="x"), TaskReply, timeout_s=2
            )
        except NotFoundError:
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- celery -------------------------------------------------------------------------------
@contextlib.contextmanager
def celery_system(opts: Options) -> Iterator[System]:
    """Redis and one solo-pool worker; the loop runs in this thread (blocking the loop)."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as redis_dir, children() as kids:
        port = free_port()
        kids.append(
            Child(
                "redis",
                [
                    "/usr/bin/redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    redis_dir,
                ],
                opts.log_dir,
                {},
            )
        )
        wait_port(port)
        os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        module = importlib.import_module("bench._celery_app")
        kids.append(
            Child(
                "celery-worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench._celery_app",
                    "worker",
                    "--pool",
                    "solo",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                opts.log_dir,
                {"BENCH_REDIS_URL": os.environ["BENCH_REDIS_URL"]},
            )
        )
        noop = module.noop
        noop.delay(0).get(timeout=60)  # worker up

        async def loop(total: int, inflight: int, max_s: float) -> Run:
            # Celery's result consumer is not safe across threads: run in this one
            return _celery_loop(module.app, noop, total, inflight, max_s)

        yield System("celery", loop, {k.name: k.pid for k in kids})


def _celery_loop(app: Any, noop: Any, total: int, inflight: int, max_s: float) -> Run:
    """Closed loop in one thread: ``then`` callbacks fire while the result consumer drains."""
    latencies: list[float] = []
    finished: list[float] = []
    pending: set[Any] = set()
    started = 0
    deadline = time.monotonic() + max_s

    def submit() -> None:
        nonlocal started
        started += 1
        t0 = time.perf_counter()
        result = noop.apply_async((1,))
        pending.add(result)

        def done(r: Any) -> None:
            finished.append(time.perf_counter() - t0)
            pending.discard(r)

        result.then(done)

    t0 = time.perf_counter()
    for _ in range(min(inflight, total)):
        submit()
    while pending:
        app.backend.result_consumer.drain_events(timeout=1.0)
        latencies.extend(finished)
        refill = len(finished)
        finished.clear()
        for _ in range(refill):
            if started < total and time.monotonic() < deadline:
                submit()
        if time.monotonic() > deadline + 30:
            raise RuntimeError(f"celery: {len(pending)} results still pending")
    return Run(len(latencies), time.perf_counter() - t0, latencies)


# -- report -------------------------------------------------------------------------------
def report(rounds: dict[str, dict[int, list[Run]]], rep: Report) -> None:
    results = {
        system: {lv: median_run(rs) for lv, rs in by_level.items() if rs}
        for system, by_level in rounds.items()
    }
    rows: list[list[object]] = []
    cpu_rows: list[list[object]] = []
    for system, runs in results.items():
        for level, r in runs.items():
            key = f"{system.replace('-', '_')}_inflight{level}"
            rep.add(f"{key}_rounds_count", len(rounds[system][level]))
            for n, each in enumerate(rounds[system][level], start=1):
                rep.add(f"{key}_round{n}_tasks_per_s", round(each.tasks_per_s, 1))
            rep.add(f"{key}_tasks_count", r.count)
            rep.add(f"{key}_elapsed_s", round(r.elapsed_s, 3))
            rep.add(f"{key}_tasks_per_s", round(r.tasks_per_s, 1))
            rep.add(f"{key}_p50_latency_ms", round(r.p_ms(50), 3))
            rep.add(f"{key}_p99_latency_ms", round(r.p_ms(99), 3))
            rows.append([system, level, r.count, r.tasks_per_s, r.p_ms(50), r.p_ms(99)])
            for proc, ms in r.cpu_ms_per_task.items():
                rep.add(f"{key}_cpu_ms_per_task_{proc.replace('-', '_')}", round(ms, 3))
                cpu_rows.append([system, level, proc, ms])
            if r.cpu_ms_per_task:
                total = sum(r.cpu_ms_per_task.values())
                rep.add(f"{key}_cpu_ms_per_task_total", round(total, 3))
                cpu_rows.append([system, level, "total", total])
    rep.table(
        "tasks: closed loop, submit → result in the caller",
        ["system", "in flight", "tasks", "tasks/s", "p50 ms", "p99 ms"],
        rows,
    )
    rep.table(
        "CPU per task (user + system, from /proc)",
        ["system", "in flight", "process", "CPU ms per task"],
        cpu_rows,
    )
    ratio_rows = []
    agentbus = results.get("agentbus", {})
    for other in ("raw", "celery"):
        for level in LEVELS:
            if level in agentbus and level in results.get(other, {}):
                pairs = zip(rounds["agentbus"][level], rounds[other][level], strict=True)
                per_round = [
                    a.tasks_per_s / b.tasks_per_s if b.tasks_per_s else float("nan")
                    for a, b in pairs
                ]
                ratio = statistics.median(per_round)
                rep.add(f"agentbus_vs_{other}_inflight{level}_ratio", round(ratio, 3))
                ratio_rows.append(
                    [f"agentbus / {other}", level, ratio, " ".join(f"{x:.2f}" for x in per_round)]
                )
    if ratio_rows:
        rep.table(
            "throughput ratios (median of the rounds' ratios)",
            ["ratio", "in flight", "value", "per round"],
            ratio_rows,
        )
    if AUTH in rounds and "agentbus" in rounds:
        compare(rounds[AUTH], rounds["agentbus"], rep)
    if agentbus:
        targets: list[tuple[str, float | int | str | None, Callable[[float], bool]]] = [
            (
                "agentbus/raw at 64 >= 0.25",
                rep.figures.get("agentbus_vs_raw_inflight64_ratio"),
                lambda v: v >= 0.25,
            ),
            (
                "agentbus/celery at 64 >= 5",
                rep.figures.get("agentbus_vs_celery_inflight64_ratio"),
                lambda v: v >= 5,
            ),
            (
                "agentbus p50 at 1 <= 2 ms",
                rep.figures.get("agentbus_inflight1_p50_latency_ms"),
                lambda v: v <= 2,
            ),
        ]
        rep.table(
            "targets (issue 3)",
            ["target", "measured", "met"],
            [[t, v, "yes" if ok(float(v)) else "NO"] for t, v, ok in targets if v is not None],
        )


async def run_systems(
    server: NatsServer,
    secured: tuple[NatsServer, AuthDir] | None,
    only: list[str],
    opts: Options,
    rep: Report,
) -> dict[str, dict[int, list[Run]]]:
    """Start the systems of ``only`` (in ``SYSTEMS`` order), measure them in rounds.

    ``secured``: the server with auth on, for the agentbus-auth row (None: no such row);
    with ``opts.auth == "on"`` the agentbus row runs only there.
    """
    url, nats_pid = server.client_url, _pid(server)
    async with contextlib.AsyncExitStack() as stack:
        systems = []
        if "raw" in only:
            systems.append(await stack.enter_async_context(raw_system(url, nats_pid, opts)))
        if "agentbus" in only and opts.auth != "on":
            systems.append(
                await stack.enter_async_context(
                    agentbus_system(url, {"nats-server": nats_pid}, opts)
                )
            )
        if "agentbus" in only and secured is not None:
            auth_server, auth = secured
            identities = await provision(auth_server.client_url, auth, PREFIX)
            record_identities(identities, rep)
            systems.append(
                await stack.enter_async_context(
                    agentbus_system(
                        auth_server.client_url, {"nats-server": _pid(auth_server)}, opts, identities
                    )
                )
            )
        if "celery" in only:
            systems.append(stack.enter_context(celery_system(opts)))
        return await measure_all(systems, opts)


def _pid(server: NatsServer) -> int:
    assert server.proc is not None
    return server.proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(prog="just bench tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per measured loop")
    parser.add_argument("--warmup", type=int, default=500, help="tasks before measuring")
    parser.add_argument("--max-s", type=float, default=60.0, help="time bound of one loop, s")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="systems, comma-separated")
    parser.add_argument(
        "--auth", choices=AUTH_MODES, default="both", help="agentbus with NATS auth off, on or both"
    )
    parser.add_argument("--profile", type=Path, help="write agentbus profiles to this dir")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all levels and systems (the median counts)"
    )
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")

    rep = Report("tasks")
    celery_v = versions("celery", "kombu", "redis", "nats-py")
    rep.print_header(
        **{
            "nats-server": tool_version([nats_server_binary(), "--version"]).split()[-1],
            "redis-server": tool_version(["/usr/bin/redis-server", "--version"]).split(" sha=")[0],
            **{k: v for k, v in celery_v.items()},
        }
    )
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as tmp:
        opts = Options(
            args.tasks,
            args.warmup,
            args.max_s,
            args.profile,
            Path(tmp),
            rounds=max(args.rounds, 1),
            auth=args.auth,
        )
        console.print(f"logs of child processes: {tmp} (kept only while running)")
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(NatsServer(Path(tmp) / "js"))
            secured = None
            if "agentbus" in only and args.auth != "off":
                secured = stack.enter_context(auth_nats_server(Path(tmp) / "auth", PREFIX))
            results = asyncio.run(run_systems(server, secured, only, opts, rep))
            if secured is not None:
                violations = secured[0].violations
                rep.add("agentbus_auth_violations_count", len(violations))
                for line in violations[:10]:
                    console.print(f"[red]permission violation: {line}")
    report(results, rep)
    rep.write_json(args.json)


if __name__ == "__main__":
    main()
