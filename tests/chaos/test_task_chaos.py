"""Chaos: 2,000 tasks survive killed agents, a killed scheduler and a restarted nats-server.

Everything runs as real processes against this test's own nats-server (file storage):
the scheduler (``python -m agentbus_scheduler``) and three agents
(``python -m tests.chaos._agent``: ``square`` returns ``n * n`` after a short sleep).
While the tasks run, two of the agents are SIGKILLed at random intervals and restarted
with the same id, the scheduler is SIGKILLed and restarted once, and nats-server is
stopped and restarted once on the same port and store directory. The third agent and
the restarted scheduler are never killed: they must come through the nats-server
restart on their own reconnect paths (the third agent must run tasks afterwards).

What is proven:

* every task ends ``succeeded`` with the right output;
* every task record reaches a terminal state exactly once: the test creates the task
  bucket with history (64 revisions, all a task ever has), so every revision the
  scheduler wrote can be read back: exactly one is terminal, and it is the last;
* duplicates are counted and dropped: every ``TaskResult`` agents publish is seen on a
  core subscription; results for a task beyond its first, published after the
  scheduler restart, are a lower bound for the restarted scheduler's
  ``agentbus_scheduler_duplicate_results_total``; at the end the test republishes 20
  old results (a zombie agent's late reports) and the counter must rise by at least 20
  while no record changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.js.api import KeyValueConfig
from prometheus_client.parser import text_string_to_metric_families

from agentbus.bus import TASK_RECORD_TTL_S, Bus
from agentbus.client import Client
from agentbus.errors import NotFoundError, UnavailableError
from agentbus.messages import (
    TERMINAL_STATUSES,
    GetTask,
    TaskReply,
    TaskResult,
    decode_record,
    decode_report,
)
from agentbus.settings import BusSettings
from bench._procs import Child, free_port
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.timeout(300)]

TASKS = 2000
AGENTS = 3
PREFIX = "chaos"
RUN_BOUND_S = 200.0
"""Every task must be terminal this long after the submit returned."""
SCHEDULER_KILL_AT = 300
NATS_RESTART_AT = 900
"""Chaos is triggered by progress (tasks seen finishing), so it hits a busy system."""
ZOMBIE_RESULTS = 20
DUPLICATES = "agentbus_scheduler_duplicate_results_total"


class Chaos:
    """The processes under test, their restarts, and what was observed of them."""

    def __init__(self, tmp: Path, server: NatsServer, seed: int) -> None:
        self.tmp = tmp
        self.server = server
        self.rng = random.Random(seed)
        self.metrics_port = free_port()
        self.env = {
            "AGENTBUS_NATS_URL": server.client_url,
            "AGENTBUS_PREFIX": PREFIX,
            "AGENTBUS_AGENT_LEASE_S": "2",
            "AGENTBUS_AGENT_FETCH_TIMEOUT_S": "1",
            "AGENTBUS_AGENT_HEARTBEAT_S": "1",
            "SCHEDULER_METRICS_PORT": str(self.metrics_port),
            "SCHEDULER_RESULTS_ACK_WAIT_S": "3",
            "SCHEDULER_RESULTS_FETCH_TIMEOUT_S": "0.5",
            "SCHEDULER_SWEEP_INTERVAL_S": "1",
            "SCHEDULER_SWEEP_LEASE_TTL_S": "2",
            "CHAOS_RUNS_FILE": str(tmp / "runs.txt"),
        }
        self.scheduler = self._scheduler()
        self.agents = [self._agent(i) for i in range(AGENTS)]
        self.agent_kills = 0
        self.scheduler_restarts = 0
        self.nats_restarts = 0
        self.scheduler_restarted_at = float("inf")
        self.duplicates_before_kill = 0.0
        self.nats_down = (float("inf"), float("inf"))

    def _scheduler(self) -> Child:
        cmd = [sys.executable, "-m", "agentbus_scheduler"]
        return Child("scheduler", cmd, self.tmp, self.env)

    def _agent(self, i: int) -> Child:
        env = {**self.env, "AGENTBUS_AGENT_ID": f"chaos-{i}"}
        return Child(f"agent-{i}", [sys.executable, "-m", "tests.chaos._agent"], self.tmp, env)

    def stop_all(self) -> None:
        for child in [*self.agents, self.scheduler]:
            child.stop(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {c.name} (tail)\n{c.tail(2500)}" for c in [self.scheduler, *self.agents]
        )

    async def duplicates(self) -> float | None:
        """The running scheduler's duplicate-result counter, None while unreachable."""
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                text = (await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        except httpx.HTTPError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == DUPLICATES:
                    return sample.value
        return None

    async def kill_agents(self, done: Callable[[], int], stop: asyncio.Event) -> None:
        while not stop.is_set() and done() < TASKS - 100:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(0.5, 2.0))
            if stop.is_set():
                return
            i = self.rng.randrange(AGENTS - 1)  # the last agent is never killed
            self.agents[i].kill()
            self.agent_kills += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))
            self.agents[i] = self._agent(i)

    async def kill_scheduler(self) -> None:
        self.duplicates_before_kill = await self.duplicates() or 0.0
        self.scheduler.kill()
        await asyncio.sleep(1.0)
        self.scheduler_restarted_at = time.monotonic()
        self.scheduler = self._scheduler()
        self.scheduler_restarts += 1

    async def restart_nats(self) -> None:
        port, store = self.server.port, self.server.store_dir
        stopping_at = time.monotonic()
        await asyncio.to_thread(self.server.stop)
        await asyncio.sleep(1.0)
        self.server = await asyncio.to_thread(NatsServer(store, port=port).start)
        self.nats_restarts += 1
        self.nats_down = (stopping_at, time.monotonic())


async def eventually_value(
    probe: Callable[[], Awaitable[float | None]], ok: Callable[[float], bool], timeout_s: float
) -> float | None:
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while (value is None or not ok(value)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = await probe()
    return value


async def test_tasks_survive_agent_scheduler_and_nats_crashes(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"chaos seed {seed}")
    server = NatsServer(tmp_path / "js").start()
    chaos: Chaos | None = None
    bus: Bus | None = None
    try:
        bus = await Bus.connect(BusSettings(nats_url=server.client_url, prefix=PREFIX))
        # The observation device: a task bucket that keeps every revision of a record.
        await bus.js.create_key_value(
            KeyValueConfig(bus.names.tasks_bucket, history=64, ttl=TASK_RECORD_TTL_S, direct=True)
        )
        await bus.ensure()
        chaos = Chaos(tmp_path, server, seed)
        await _run(bus, chaos, random.Random(seed + 1))
    except BaseException:
        if chaos is not None:
            print(chaos.logs())
        raise
    finally:  # every step runs, whatever the one before did
        try:
            if chaos is not None:
                chaos.stop_all()
        finally:
            try:
                if bus is not None:
                    await asyncio.wait_for(bus.close(), 15)
            finally:
                (chaos.server if chaos is not None else server).stop()


async def _run(bus: Bus, chaos: Chaos, rng: random.Random) -> None:
    client = Client(bus)
    finished: set[str] = set()
    results: dict[str, list[tuple[float, bytes]]] = defaultdict(list)

    async def on_event(msg: object) -> None:
        data = msgspec.json.decode(msg.data)  # type: ignore[attr-defined]
        if data.get("status") in TERMINAL_STATUSES:
            finished.add(data["task_id"])

    async def on_result(msg: object) -> None:
        report = decode_report(msg.data)  # type: ignore[attr-defined]
        if isinstance(report, TaskResult):
            results[report.task_id].append((time.monotonic(), msg.data))  # type: ignore[attr-defined]

    await bus.nc.subscribe(bus.names.events_all("task"), cb=on_event)
    await bus.nc.subscribe(bus.names.results_all(), cb=on_result)

    await _scheduler_answers(bus)
    inputs = {f"chaos-{i:05d}": i for i in range(TASKS)}
    tasks = [
        await client.build_task("square", {"n": n, "sleep_s": rng.uniform(0.01, 0.1)}, task_id=tid)
        for tid, n in inputs.items()
    ]
    replies = await client.submit_many(tasks)
    assert all(r.created for r in replies)
    started = time.monotonic()

    stop = asyncio.Event()
    killer = asyncio.create_task(chaos.kill_agents(lambda: len(finished), stop))
    try:
        await eventually(
            lambda: len(finished) >= SCHEDULER_KILL_AT,
            timeout_s=120,
            what="progress before the kill",
        )
        await chaos.kill_scheduler()
        await eventually(
            lambda: len(finished) >= NATS_RESTART_AT,
            timeout_s=120,
            what="progress after the kill",
        )
        await chaos.restart_nats()
        records = {}
        async for record in client.wait_many(inputs, timeout_s=RUN_BOUND_S):
            records[record.task_id] = record
    finally:
        stop.set()
        await killer
    elapsed_s = time.monotonic() - started

    # Late reports of a zombie agent: counted as duplicates, changing nothing.
    seen_duplicates = _duplicates_after(results, chaos.scheduler_restarted_at, chaos.nats_down)
    published = sum(len(v) for v in results.values())
    published_duplicates = published - len(results)
    # (waits until the redelivered duplicates seen so far are counted, bounded)
    before = await eventually_value(chaos.duplicates, lambda v: v >= seen_duplicates, 30)
    assert before is not None, "the restarted scheduler's metrics never answered"
    zombies = rng.sample(sorted(results), ZOMBIE_RESULTS)
    for task_id in zombies:
        zombie = results[task_id][0][1]
        subject = bus.names.result_subject("square", decode_report(zombie).agent_id)
        await bus.nc.publish(subject, zombie)
    after = await eventually_value(
        chaos.duplicates, lambda v: v >= before + ZOMBIE_RESULTS, timeout_s=30
    )

    revisions = await _all_revisions(bus, set(inputs))
    _report(chaos, published, published_duplicates, records, revisions, before, after, elapsed_s)
    print(f"  duplicates seen published to the restarted scheduler (lower bound) {seen_duplicates}")

    # -- every task succeeded with the right output
    assert set(records) == set(inputs)
    wrong = {t: r.status for t, r in records.items() if r.status != "succeeded"}
    assert not wrong, f"{len(wrong)} tasks did not succeed: {dict(list(wrong.items())[:5])}"
    for task_id, n in inputs.items():
        output = msgspec.json.decode(records[task_id].output)
        assert output == {"n": n, "square": n * n}, (task_id, output)
    # -- terminal exactly once: one terminal revision per record, and it is the last
    twice = {
        t: s for t, s in revisions.items() if [x in TERMINAL_STATUSES for x in s].count(True) != 1
    }
    assert not twice, f"records not terminal exactly once: {dict(list(twice.items())[:5])}"
    moved = {t: s for t, s in revisions.items() if s[-1] not in TERMINAL_STATUSES}
    assert not moved, f"records left terminal: {dict(list(moved.items())[:5])}"
    # -- the chaos happened while tasks ran
    assert chaos.scheduler_restarts == 1 and chaos.nats_restarts == 1
    assert chaos.agent_kills >= 3, f"only {chaos.agent_kills} agent kills"
    # -- the agent never killed came through the nats-server restart
    steady = f"chaos-{AGENTS - 1}"
    runs_after = [r for r in _runs(chaos) if r[2] == steady and r[3] > chaos.nats_down[1]]
    assert runs_after, f"{steady} ran no task after the nats-server restart"
    # -- duplicates counted: zombies exactly, redeliveries at least as many as seen
    # (>=: a straggler redelivered meanwhile may be counted too)
    assert after is not None and after - before >= ZOMBIE_RESULTS, (before, after)
    assert before >= seen_duplicates, (before, seen_duplicates)


async def _scheduler_answers(bus: Bus) -> None:
    async def probe() -> bool:
        try:
            await bus.request(
                bus.names.endpoint("scheduler", "get"), GetTask(task_id="x"), TaskReply, timeout_s=2
            )
        except NotFoundError:
            return True
        except UnavailableError:
            return False
        return True

    await eventually(probe, timeout_s=60, what="scheduler answers")


def _duplicates_after(
    results: dict[str, list[tuple[float, bytes]]], since: float, nats_down: tuple[float, float]
) -> int:
    """Results published after ``since`` that were not their task's first result.

    Tasks with a result published while nats-server was going down are left out: the
    server may have passed such a result to core subscribers without storing it, so
    the scheduler never saw it (the agent got no ack and its task was redelivered).
    """
    extra = 0
    low, high = nats_down[0] - 0.5, nats_down[1] + 0.5
    for published in results.values():
        times = sorted(t for t, _ in published)
        if any(low <= t <= high for t in times):
            continue
        extra += sum(1 for i, t in enumerate(times) if t > since and i > 0)
    return extra


async def _all_revisions(bus: Bus, task_ids: set[str]) -> dict[str, list[str]]:
    """Every status each task's record had, in revision order (the bucket keeps history)."""
    kv = await bus.kv(bus.names.tasks_bucket)
    watcher = await kv.watchall(include_history=True)
    statuses: dict[str, list[tuple[int, str]]] = defaultdict(list)
    try:
        async with asyncio.timeout(60):
            async for entry in watcher:
                if entry is None:
                    break
                if entry.key in task_ids and entry.value and entry.operation is None:
                    record = decode_record(entry.value)
                    statuses[entry.key].append((entry.revision or 0, record.status))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return {k: [s for _, s in sorted(v)] for k, v in statuses.items()}


def _runs(chaos: Chaos) -> list[tuple[str, int, str, float]]:
    """Handler runs: (task id, attempt, agent id, monotonic time)."""
    path = Path(chaos.env["CHAOS_RUNS_FILE"])
    lines = path.read_text().splitlines() if path.exists() else []
    runs = []
    for line in lines:
        task_id, attempt, agent_id, at = line.split()
        runs.append((task_id, int(attempt), agent_id, float(at)))
    return runs


def _report(
    chaos: Chaos,
    published: int,
    published_duplicates: int,
    records: Mapping[str, object],
    revisions: dict[str, list[str]],
    before: float | None,
    after: float | None,
    elapsed_s: float,
) -> None:
    runs = _runs(chaos)
    per_task = Counter(r[0] for r in runs)
    print(
        f"\nchaos: {TASKS} tasks in {elapsed_s:.1f} s; agent kills {chaos.agent_kills}, "
        f"scheduler restarts {chaos.scheduler_restarts}, nats restarts {chaos.nats_restarts}\n"
        f"  handler runs {len(runs)} ({sum(1 for c in per_task.values() if c > 1)} tasks run "
        f"more than once)\n"
        f"  results seen published {published}, duplicates among them {published_duplicates}\n"
        f"  duplicates dropped: first scheduler >= {chaos.duplicates_before_kill:.0f} "
        f"(scraped before its kill), restarted scheduler {before} before the "
        f"{ZOMBIE_RESULTS} zombie results, {after} after\n"
        f"  record revisions {sum(len(v) for v in revisions.values())} for {len(records)} tasks"
    )
