"""LangGraph checkpointers in ``just bench state``: agentbus's against LangGraph's Postgres one.

``AgentbusSaver`` (``agentbus.integrations.langgraph``) on the bench's nats-server and
checkpoint service, against ``AsyncPostgresSaver`` (``langgraph-checkpoint-postgres``)
on a PostgreSQL started here (``tests/_harness/postgres.py``, default settings, fsync
on), one saver of each for every caller. The Postgres saver runs on a
``psycopg_pool.AsyncConnectionPool`` of 16 connections (``autocommit=True``,
``row_factory=dict_row``, ``prepare_threshold=0``) and ``await saver.setup()``, as
LangGraph's docs show. That saver holds an ``asyncio.Lock`` around every database call,
so one saver runs one call at a time whatever the pool size (16 callers queue on it).

Durability differs: PostgreSQL fsyncs its WAL at every commit (``fsync`` and
``synchronous_commit`` on, recorded as ``postgres_fsync``); the bench's nats-server keeps
JetStream's default (written to the OS at once, fsynced every 2 minutes).

Saver calls, for state of 1 KiB and 64 KiB (one channel holding random bytes, a new
channel version each put), in closed loops of C callers (C = 1 and 16), each caller on
a thread id of its own:

* ``aput``: each put's config names the previous checkpoint (as LangGraph does);
* ``aget_tuple``: the thread's latest checkpoint (state length checked);
* ``aput_writes``: two writes (half the state size each) on one of the thread's
  checkpoints, a new task id per call.

``graph``: a 3-node ``StateGraph`` (a -> b -> c, a 1 KiB bytes value in its state)
compiled with each saver and run ``ainvoke`` 200 times, each run on a new thread, by
C callers; figures are wall time (s) and per-run p50/p99 (ms).

Figures (``Report``): ``langgraph_<op>_<size>_c<C>_{p50,p99}_ms_{agentbus,postgres}``
and ``..._ratio`` (agentbus / postgres: below 1, agentbus is faster);
``langgraph_graph_c<C>_wall_s_{agentbus,postgres}`` and its ratio, per-run p50/p99.
Issue 15's target (every ``aput`` and ``aget_tuple`` ratio at most 1) is printed as met
or missed: ``langgraph_target``, ``langgraph_target_missed_count``. ``--scale``
multiplies the operation and run counts.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agentbus.bus import Bus
from agentbus.integrations.langgraph import AgentbusSaver
from bench._procs import tool_version
from bench.common import Report, closed_loops, console, percentile
from tests._harness.langgraph_graph import build
from tests._harness.postgres import PostgresServer

KIB = 1024
SIZES = ((1 * KIB, "1kib", 400), (64 * KIB, "64kib", 200))
"""(state bytes, key, operations per caller level and saver)."""
CALLERS = (1, 16)
GRAPH_RUNS = 200
GRAPH_STATE_BYTES = 1 * KIB
POOL_SIZE = 16
PEERS = ("agentbus", "postgres")

Op = Callable[[int, int], Awaitable[None]]
Savers = dict[str, BaseCheckpointSaver[Any]]


def _checkpoint(value: bytes, version: str) -> Checkpoint:
    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"state": value}
    ckpt["channel_versions"] = {"state": version}
    return ckpt


def _saver_ops(
    saver: BaseCheckpointSaver[Any], run: str, payloads: list[bytes]
) -> tuple[Op, Op, Op, list[str]]:
    """put, get and write operations of one run; caller ``c`` uses thread ``<run>-<c>``."""
    size = len(payloads[0])
    heads: dict[int, RunnableConfig] = {}
    versions: dict[int, str] = {}
    written: dict[int, list[RunnableConfig]] = defaultdict(list)
    threads: list[str] = []

    async def put(caller: int, i: int) -> None:
        if caller not in heads:
            threads.append(f"{run}-{caller}")
            heads[caller] = {"configurable": {"thread_id": threads[-1], "checkpoint_ns": ""}}
        version = saver.get_next_version(versions.get(caller), None)
        ckpt = _checkpoint(payloads[i % len(payloads)], version)
        meta: Any = {"source": "loop", "step": i, "parents": {}}
        heads[caller] = await saver.aput(heads[caller], ckpt, meta, {"state": version})
        versions[caller] = version
        written[caller].append(heads[caller])

    async def get(caller: int, i: int) -> None:
        config: RunnableConfig = {
            "configurable": {"thread_id": f"{run}-{caller}", "checkpoint_ns": ""}
        }
        got = await saver.aget_tuple(config)
        assert got is not None, f"{run}-{caller}: no checkpoint"
        assert len(got.checkpoint["channel_values"]["state"]) == size

    async def writes(caller: int, i: int) -> None:
        configs = written[caller]
        half = payloads[i % len(payloads)][: size // 2]
        pairs = [("state", half), ("log", half)]
        await saver.aput_writes(configs[i % len(configs)], pairs, f"task-{i}")

    return put, get, writes, threads


def _record(report: Report, key: str, figures: dict[str, list[float]]) -> list[list[object]]:
    """p50/p99 of both peers and their ratios under ``langgraph_<key>``; table rows."""
    rows: list[list[object]] = []
    for q in (50, 99):
        values = {}
        for peer in PEERS:
            values[peer] = round(percentile(figures[peer], q), 3)
            report.add(f"langgraph_{key}_p{q}_ms_{peer}", values[peer])
        ratio = round(values["agentbus"] / values["postgres"], 3)
        report.add(f"langgraph_{key}_p{q}_ratio", ratio)
        rows.append([f"p{q} ms", values["agentbus"], values["postgres"], ratio])
    report.add(f"langgraph_{key}_count", len(figures["agentbus"]))
    return rows


async def bench_saver_calls(savers: Savers, report: Report, scale: float) -> None:
    """aput / aget_tuple / aput_writes p50 and p99 for each size, caller count and peer."""
    rows = []
    for size, label, count in SIZES:
        payloads = [os.urandom(size) for _ in range(4)]
        for callers in CALLERS:
            total = max(callers, int(count * scale))
            results: dict[str, dict[str, list[float]]] = defaultdict(dict)
            for peer, saver in savers.items():  # peers interleaved: same background load
                put, get, writes, threads = _saver_ops(saver, f"lg-{label}-c{callers}", payloads)
                for name, op in (("aput", put), ("aget_tuple", get), ("aput_writes", writes)):
                    results[name][peer], _ = await closed_loops(callers, total, op)
                for thread in threads:
                    await saver.adelete_thread(thread)
            for name, figures in results.items():
                for row in _record(report, f"{name}_{label}_c{callers}", figures):
                    rows.append([name, label, callers, *row])
    report.table(
        "LangGraph savers: agentbus = AgentbusSaver, postgres = AsyncPostgresSaver; "
        "ratio = agentbus/postgres (below 1: agentbus faster)",
        ["op", "state", "callers", "figure", "agentbus", "postgres", "ratio"],
        rows,
    )
    report_target(report)


def report_target(report: Report) -> None:
    """Issue 15's target: aput and aget_tuple ratios <= 1 at every size, C, p50 and p99."""
    keys = [
        f"langgraph_{op}_{label}_c{callers}_p{q}_ratio"
        for op in ("aput", "aget_tuple")
        for _, label, _ in SIZES
        for callers in CALLERS
        for q in (50, 99)
    ]
    missed = [k for k in keys if float(report.figures[k]) > 1]
    verdict = "missed" if missed else "met"
    report.add("langgraph_target", verdict)
    report.add("langgraph_target_missed_count", len(missed))
    colour = "red" if missed else "green"
    console.print(
        f"[{colour}]target: AgentbusSaver aput and aget_tuple at least as fast as "
        f"AsyncPostgresSaver (p50, p99; 1 and 16 callers; 1 and 64 KiB): {verdict}"
        + (f" ({len(missed)} of {len(keys)} ratios above 1)" if missed else "")
    )


async def _graph_runs(
    saver: BaseCheckpointSaver[Any], run: str, callers: int, total: int, blob: bytes
) -> tuple[list[float], float]:
    """``total`` graph runs by ``callers`` loops, each on a new thread; latencies, wall."""
    graph = build(fail_b=False).compile(checkpointer=saver)
    threads: list[str] = []

    async def invoke(caller: int, i: int) -> None:
        threads.append(f"{run}-{caller}-{i}")
        config: RunnableConfig = {"configurable": {"thread_id": threads[-1]}}
        final = await graph.ainvoke({"log": [], "n": 1, "blob": blob}, config)
        assert (final["n"], final["log"]) == (25, ["a", "b", "c"]), final

    result = await closed_loops(callers, total, invoke)
    for thread in threads:
        await saver.adelete_thread(thread)
    return result


async def bench_graph(savers: Savers, report: Report, scale: float) -> None:
    """A 3-node graph run ``GRAPH_RUNS`` times per saver, by 1 and by 16 callers."""
    blob = os.urandom(GRAPH_STATE_BYTES)
    total = max(max(CALLERS), int(GRAPH_RUNS * scale))
    rows = []
    for callers in CALLERS:
        runs: dict[str, list[float]] = {}
        walls: dict[str, float] = {}
        for peer, saver in savers.items():
            run = f"lg-graph-{peer}-c{callers}"
            runs[peer], walls[peer] = await _graph_runs(saver, run, callers, total, blob)
        key = f"graph_c{callers}"
        for peer in PEERS:
            report.add(f"langgraph_{key}_wall_s_{peer}", round(walls[peer], 3))
        wall_ratio = round(walls["agentbus"] / walls["postgres"], 3)
        report.add(f"langgraph_{key}_wall_ratio", wall_ratio)
        runs_count = len(runs["agentbus"])
        walls_s = [round(walls[peer], 3) for peer in PEERS]
        rows.append([callers, runs_count, "wall s", *walls_s, wall_ratio])
        for row in _record(report, key, runs):
            rows.append([callers, runs_count, *row])
    report.table(
        "LangGraph 3-node graph, ainvoke on a new thread per run (wall s for all runs, "
        "per-run ms); ratio = agentbus/postgres (below 1: agentbus faster)",
        ["callers", "runs", "figure", "agentbus", "postgres", "ratio"],
        rows,
    )


async def run_langgraph_bench(bus: Bus, report: Report, scale: float) -> None:
    """Start PostgreSQL, then measure both savers (the checkpoint service must be up)."""
    server = PostgresServer(fsync=True)
    await asyncio.to_thread(server.__enter__)
    try:
        version = tool_version([str(server.bindir / "postgres"), "--version"])
        report.add("version_postgres", version)
        fsync = (await asyncio.to_thread(server.psql, "SHOW fsync")).strip()
        sync_commit = (await asyncio.to_thread(server.psql, "SHOW synchronous_commit")).strip()
        report.add("postgres_fsync", fsync)
        report.add("postgres_synchronous_commit", sync_commit)
        console.print(
            f"  {version} for AsyncPostgresSaver: fsync {fsync}, synchronous_commit {sync_commit}"
        )
        pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
            server.url(),
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
            open=False,
        )
        async with pool:
            postgres = AsyncPostgresSaver(pool)
            await postgres.setup()
            agentbus = AgentbusSaver(bus, agent_id="bench-lg")
            savers: Savers = {"agentbus": agentbus, "postgres": postgres}
            await bench_saver_calls(savers, report, scale)
            await bench_graph(savers, report, scale)
    finally:
        await asyncio.to_thread(server.close)
