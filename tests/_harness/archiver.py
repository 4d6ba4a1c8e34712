"""The archiver for the tests: in-process until ready, and the audit table's contents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import nats.js.errors
import psycopg
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import AgentEvent, TaskEvent, TaskStatus, encode, utcnow
from agentbus.names import Names
from agentbus_archiver.service import serve
from agentbus_archiver.settings import ArchiverSettings
from tests._harness.polling import eventually
from tests._harness.services import serving


def archiver_settings(database_url: str, **overrides: object) -> ArchiverSettings:
    """Settings for a test: short waits and leases, small batches."""
    values: dict[str, object] = {
        "database_url": database_url,
        "batch_size": 50,
        "fetch_timeout_s": 0.2,
        "ack_wait_s": 2.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "connect_timeout_s": 2.0,
    }
    values.update(overrides)
    return ArchiverSettings(**values)  # type: ignore[arg-type]


async def consumer_exists(bus: Bus) -> bool:
    try:
        await bus.js.consumer_info(bus.names.events_stream, Names.ARCHIVER_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return True


@asynccontextmanager
async def running_archiver(
    bus: Bus, settings: ArchiverSettings, *, probe: Bus | None = None
) -> AsyncIterator[CollectorRegistry]:
    """Run the archiver in-process on ``bus`` for the block; its consumer exists on entry."""
    registry = CollectorRegistry()
    async with serving(
        lambda stop: serve(bus, stop, settings, registry),
        lambda: consumer_exists(probe or bus),
        what="archiver",
        ready_timeout_s=20.0,
    ):
        yield registry


async def query(url: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of ``sql`` on database ``url``."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql.encode())
        return list(await cur.fetchall()) if cur.description else []


async def archived_seqs(url: str) -> list[int]:
    """Every archived sequence, in order, with repeats if there were any."""
    try:
        rows = await query(url, "SELECT seq FROM events ORDER BY seq")
    except psycopg.errors.UndefinedTable:
        return []
    return [int(r[0]) for r in rows]  # type: ignore[call-overload]


async def stream_seqs(bus: Bus) -> list[int]:
    """Every sequence the events stream holds (no deletes in a Limits stream here)."""
    state = (await bus.js.stream_info(bus.names.events_stream)).state
    return list(range(state.first_seq, state.last_seq + 1)) if state.messages else []


async def publish_task_events(bus: Bus, count: int, *, pace_s: float = 0.0) -> None:
    """Publish ``count`` task events (tasks ``t0``..), ``pace_s`` apart."""
    for i in range(count):
        event = TaskEvent(task_id=f"t{i}", capability="echo", status="queued", at=utcnow())
        await bus.js.publish(bus.names.task_event_subject("queued", f"t{i}"), encode(event))
        if pace_s:
            await asyncio.sleep(pace_s)


async def publish_until(bus: Bus, stop: asyncio.Event, *, pace_s: float = 0.002) -> int:
    """Publish task events ``pace_s`` apart until ``stop`` is set; how many."""
    sent = 0
    while not stop.is_set():
        await publish_task_events(bus, 1)
        sent += 1
        await asyncio.sleep(pace_s)
    return sent


async def fill_sample_trail(
    bus: Bus, database_url: str, request: Mapping[str, str], decision: Mapping[str, str]
) -> None:
    """Archive a small trail into ``database_url`` and wait until it is all there.

    Events by stream sequence: 1-4 task ``task-a`` queued, running on ``echo-0``, and
    ``task-b`` queued, then ``task-a`` succeeded; 5 ``echo-0`` joined (its time set
    three hours back); 6 an approval ``request``; 7 its ``decision`` (JSON payloads).
    """
    n = bus.names
    now = utcnow()
    history: tuple[tuple[TaskStatus, str, str | None], ...] = (
        ("queued", "task-a", None),
        ("running", "task-a", "echo-0"),
        ("queued", "task-b", None),
        ("succeeded", "task-a", "echo-0"),
    )
    for status, task, agent in history:
        event = TaskEvent(task_id=task, capability="echo", status=status, at=now, agent_id=agent)
        await bus.js.publish(n.task_event_subject(status, task), encode(event))
    await bus.publish_event("agent", "joined", AgentEvent(agent_id="echo-0", kind="joined", at=now))
    await bus.js.publish(n.event_subject("approval", "requested"), json.dumps(request).encode())
    await bus.js.publish(n.event_subject("approval", "decided"), json.dumps(decision).encode())
    async with running_archiver(bus, archiver_settings(database_url)):

        async def done() -> bool:
            return await archived_seqs(database_url) == await stream_seqs(bus)

        await eventually(done, what="events archived")
    await query(database_url, "UPDATE events SET time = now() - interval '3 hours' WHERE seq = 5")
