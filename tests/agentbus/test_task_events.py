"""Every record transition is a ``TaskEvent`` on ``<p>.events.task.<status>.<task_id>``,
so a task's history replays from the events stream (``Client.history``,
``agentbus task ID --history``)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.errors import RetryableTaskError
from agentbus.messages import TaskEvent
from agentbus.runtime import TaskContext
from agentbus.settings import BusSettings
from tests._harness.work_stream import FAST, make_agent, running, scheduler

pytestmark = pytest.mark.nats


@pytest.mark.timeout(60)
async def test_history_replays_every_transition_of_one_task(
    bus: Bus, bus_settings: BusSettings
) -> None:
    agent = make_agent()

    @agent.handler("work")
    async def work(ctx: TaskContext, fails: int) -> int:
        if ctx.attempt <= fails:
            raise RetryableTaskError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    async with scheduler(bus) as s, running(agent, bus):
        await s.client.submit("work", 1, task_id="h1", backoff=FAST)
        await s.client.submit("work", 0, task_id="h2")
        await s.client.wait("h1", timeout_s=20)
        await s.client.wait("h2", timeout_s=20)
        history = await s.client.history("h1")
        other = await s.client.history("h2")
        assert await s.client.history("never-submitted") == []
        stored = await bus.js.stream_info(
            bus.names.events_stream, subjects_filter=bus.names.task_history("h1")
        )
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "task",
                "h1",
                "--history",
                "--nats-url",
                bus_settings.nats_url,
                "--prefix",
                bus_settings.prefix,
            ],
        )
        missing = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "task",
                "nope",
                "--history",
                "--nats-url",
                bus_settings.nats_url,
                "--prefix",
                bus_settings.prefix,
            ],
        )

    assert [(e.status, e.attempt) for e in history] == [
        ("queued", 0),
        ("running", 1),
        ("queued", 1),  # failed retryably: back in the queue until next_attempt_at
        ("running", 2),
        ("succeeded", 2),
    ]
    assert all(e.task_id == "h1" for e in history)
    retry = history[2]
    assert retry.error is not None and retry.error.message == "attempt 1 failed"
    assert retry.next_attempt_at is not None and retry.next_attempt_at > history[1].at
    assert [e.status for e in other] == ["queued", "running", "succeeded"]
    assert set(stored.state.subjects or {}) == {
        bus.names.task_event_subject(status, "h1") for status in ("queued", "running", "succeeded")
    }
    assert result.exit_code == 0, result.output
    printed = msgspec.json.decode(result.stdout, type=list[TaskEvent])
    assert [e.status for e in printed] == [e.status for e in history]
    assert missing.exit_code == 1 and "no events" in missing.stderr


async def test_event_subject_names_the_task(bus: Bus) -> None:
    names = bus.names
    assert names.task_event_subject("dead", "abc") == f"{names.prefix}.events.task.dead.abc"
    assert names.task_history("abc") == f"{names.prefix}.events.task.*.abc"
