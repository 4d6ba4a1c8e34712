"""The archiver against a real nats-server and a real PostgreSQL: columns, exactly once
after a crash and after a database outage, retention."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.messages import AgentEvent, ReplicaEvent, TaskEvent, encode, utcnow
from agentbus.names import Names
from tests._harness.archiver import (
    archived_seqs,
    archiver_settings,
    consumer_exists,
    publish_task_events,
    publish_until,
    query,
    running_archiver,
    stream_seqs,
)
from tests._harness.polling import eventually
from tests._harness.postgres import PostgresServer
from tests._harness.services import end_processes, spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]


async def _all_archived(bus: Bus, url: str) -> bool:
    want = await stream_seqs(bus)
    return bool(want) and await archived_seqs(url) == want


async def _more_published(bus: Bus, at_least: int) -> bool:
    return len(await stream_seqs(bus)) >= at_least


async def test_events_are_archived_with_their_columns(bus: Bus, audit_database_url: str) -> None:
    n = bus.names
    at = utcnow()
    await bus.js.publish(
        n.task_event_subject("running", "task-1"),
        encode(TaskEvent(task_id="task-1", capability="echo", status="running", at=at,
                         agent_id="echo-0")),
    )  # fmt: skip
    await bus.publish_event("agent", "joined", AgentEvent(agent_id="echo-0", kind="joined", at=at))
    replica = ReplicaEvent(node_id="n1", deployment="echo", replica=0, kind="started", at=at)
    await bus.publish_event("replica", "started", replica)
    await bus.js.publish(n.event_subject("error", "garbled"), b"not json")
    async with running_archiver(bus, archiver_settings(audit_database_url)) as registry:
        await eventually(lambda: _all_archived(bus, audit_database_url), what="events archived")
        # 4 events, and the ErrorEvent the bad one led to
        assert registry.get_sample_value("agentbus_archiver_events_archived_total") == 5
        assert (
            registry.get_sample_value(
                "agentbus_bad_messages_total", {"service": "archiver", "source": "events"}
            )
            == 1
        )
    rows = await query(
        audit_database_url,
        "SELECT seq, subject, entity, kind, task_id, agent_id, deployment, capability,"
        " payload, time FROM events ORDER BY seq",
    )
    assert [r[:8] for r in rows[:4]] == [
        (1, n.task_event_subject("running", "task-1"), "task", "running", "task-1", "echo-0",
         None, "echo"),
        (2, n.event_subject("agent", "joined"), "agent", "joined", None, "echo-0", None, None),
        (3, n.event_subject("replica", "started"), "replica", "started", None, "", "echo", None),
        (4, n.event_subject("error", "garbled"), "error", "garbled", None, None, None, None),
    ]  # fmt: skip
    assert rows[0][8]["status"] == "running"  # type: ignore[index]
    assert rows[3][8] == "not json"  # archived all the same, as a JSON string
    assert all(abs((r[9] - at).total_seconds()) < 60 for r in rows)  # type: ignore[operator]
    # The bad payload was reported: an ErrorEvent of the archiver, archived in turn.
    errors = await query(
        audit_database_url,
        f"SELECT payload FROM events WHERE subject = '{n.event_subject('error', 'archiver')}'",
    )
    assert "payload is not JSON" in json.dumps(errors)


async def test_a_killed_archiver_resumes_without_gap_or_duplicate(
    bus: Bus, audit_database_url: str, tmp_path: Path
) -> None:
    env = {
        "AGENTBUS_AUDIT_DATABASE_URL": audit_database_url,
        "ARCHIVER_BATCH_SIZE": "20",
        "ARCHIVER_ACK_WAIT_S": "2",
        "ARCHIVER_FETCH_TIMEOUT_S": "0.2",
    }
    url, prefix = bus.settings.nats_url, bus.names.prefix
    first = spawn_service("archiver", url, prefix, tmp_path / "a1.log", env)
    second = None
    done = asyncio.Event()
    publishing = asyncio.create_task(publish_until(bus, done))
    try:
        await eventually(lambda: consumer_exists(bus), what="archiver consumer")

        async def some_archived() -> bool:
            return len(await archived_seqs(audit_database_url)) >= 100

        await eventually(some_archived, timeout_s=30, what="100 events archived")
        first.send_signal(signal.SIGKILL)  # mid-stream: a batch fetched, unacked or uncommitted
        first.wait(10)
        assert not publishing.done()
        second = spawn_service("archiver", url, prefix, tmp_path / "a2.log", env)
        killed_at = len(await archived_seqs(audit_database_url))

        async def archiving_again() -> bool:
            return len(await archived_seqs(audit_database_url)) >= killed_at + 200

        await eventually(archiving_again, timeout_s=30, what="the restarted archiver at work")
        done.set()
        assert await publishing > killed_at
        await eventually(
            lambda: _all_archived(bus, audit_database_url), timeout_s=60, what="all archived"
        )
    finally:
        publishing.cancel()
        end_processes([p for p in (first, second) if p is not None])
    assert await archived_seqs(audit_database_url) == await stream_seqs(bus)


async def test_a_database_outage_holds_the_batch_then_archives_everything(
    bus: Bus, postgres: PostgresServer, audit_database_url: str
) -> None:
    settings = archiver_settings(audit_database_url)
    async with running_archiver(bus, settings) as registry:
        done = asyncio.Event()
        publishing = asyncio.create_task(publish_until(bus, done))
        try:

            async def some_archived() -> bool:
                return len(await archived_seqs(audit_database_url)) >= 50

            await eventually(some_archived, timeout_s=30, what="50 events archived")
            postgres.stop_immediately()
            try:

                def failing() -> bool:
                    errors = registry.get_sample_value(
                        "agentbus_archiver_database_errors_total", {"operation": "insert"}
                    )
                    return (errors or 0) >= 2

                await eventually(failing, timeout_s=30, what="inserts failing")
                assert registry.get_sample_value("agentbus_archiver_database_up") == 0
                sent = len(await stream_seqs(bus))
                await eventually(
                    lambda: _more_published(bus, sent + 50), what="events during the outage"
                )
            finally:
                postgres.start()
            done.set()
            await publishing
            await eventually(
                lambda: _all_archived(bus, audit_database_url), timeout_s=60, what="all archived"
            )
        finally:
            publishing.cancel()
        assert registry.get_sample_value("agentbus_archiver_database_up") == 1
    assert await archived_seqs(audit_database_url) == await stream_seqs(bus)


async def test_retention_deletes_old_rows_and_counts_them(
    bus: Bus, audit_database_url: str
) -> None:
    await publish_task_events(bus, 10)
    async with running_archiver(bus, archiver_settings(audit_database_url)):
        await eventually(lambda: _all_archived(bus, audit_database_url), what="10 archived")
    await query(
        audit_database_url,
        "UPDATE events SET time = now() - interval '3 days' WHERE seq <= 4",
    )
    settings = archiver_settings(audit_database_url, retention_days=2, retention_interval_s=0.2)
    async with running_archiver(bus, settings) as registry:

        async def pruned() -> bool:
            return await archived_seqs(audit_database_url) == list(range(5, 11))

        await eventually(pruned, what="rows older than 2 days deleted")
        assert registry.get_sample_value("agentbus_archiver_retention_deleted_total") == 4


async def test_a_deleted_consumer_is_recreated_after_the_tables_last_event(
    bus: Bus, audit_database_url: str
) -> None:
    await publish_task_events(bus, 10)
    async with running_archiver(bus, archiver_settings(audit_database_url)):
        await eventually(lambda: _all_archived(bus, audit_database_url), what="10 archived")
    await bus.js.delete_consumer(bus.names.events_stream, Names.ARCHIVER_CONSUMER)
    await publish_task_events(bus, 5)
    async with running_archiver(bus, archiver_settings(audit_database_url)) as registry:
        await eventually(lambda: _all_archived(bus, audit_database_url), what="15 archived")
        info = await bus.js.consumer_info(bus.names.events_stream, Names.ARCHIVER_CONSUMER)
        assert info.config.opt_start_seq == 11
        assert registry.get_sample_value("agentbus_archiver_events_archived_total") == 5
        assert registry.get_sample_value("agentbus_archiver_events_duplicate_total") == 0


def test_the_archiver_refuses_to_start_without_a_database(tmp_path: Path) -> None:
    proc = spawn_service("archiver", "nats://127.0.0.1:1", "nodb", tmp_path / "a.log")
    assert proc.wait(30) == 2
    assert "AGENTBUS_AUDIT_DATABASE_URL" in (tmp_path / "a.log").read_text()
