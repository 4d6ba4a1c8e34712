"""Per-task timeouts and absolute deadlines.

- ``timeout_s``: the handler is cancelled; the attempt fails retryably
  (``TaskTimeoutError``) and the next attempt may succeed.
- ``deadline``: a task never starts after it. The agent checks before starting
  (``TaskResult(expired)``, no ``TaskStarted``); a retry that would start after it ends
  the task at once; the scheduler's sweep expires queued tasks no agent takes and
  deletes their message; a task that started in time runs to its end.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.errors import RetryableTaskError
from agentbus.messages import Backoff, Task, TaskResult, TaskStarted, decode_report, encode, utcnow
from agentbus.runtime import TaskContext
from tests._harness.polling import eventually
from tests._harness.work_stream import (
    FAST,
    Calls,
    make_agent,
    running,
    scheduler,
    status_is,
    stream_messages,
)

pytestmark = pytest.mark.nats


def sleepy_agent(calls: Calls) -> Any:
    agent = make_agent()

    @agent.handler("work")
    async def work(ctx: TaskContext, seconds: list[float]) -> str:
        calls.seen.append((ctx.task_id, ctx.attempt))
        try:
            await asyncio.sleep(seconds[min(ctx.attempt, len(seconds)) - 1])
        except asyncio.CancelledError:
            calls.cancelled.append(f"{ctx.task_id}#{ctx.attempt}")
            raise
        return f"slept on attempt {ctx.attempt}"

    return agent


@pytest.mark.timeout(60)
async def test_timeout_cancels_the_handler_and_the_attempt_is_retried(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus) as s, running(sleepy_agent(calls), bus):
        # attempt 1 would sleep 30 s: cancelled at 0.5 s; attempt 2 sleeps 0.01 s
        await s.client.submit(
            "work", [30.0, 0.01], task_id="slow", timeout_s=0.5, max_attempts=3, backoff=FAST
        )
        record = await s.client.wait("slow", timeout_s=30)
    assert record.status == "succeeded"
    assert msgspec.json.decode(record.output) == "slept on attempt 2"
    assert calls.cancelled == ["slow#1"]  # the handler itself saw the cancellation
    first = record.attempts[0]
    assert first.status == "failed" and first.error is not None
    assert (first.error.error_type, first.error.retryable) == ("TaskTimeoutError", True)
    assert first.finished_at is not None
    assert timedelta(seconds=0.5) <= first.finished_at - first.started_at < timedelta(seconds=20)


@pytest.mark.timeout(60)
async def test_timeout_on_every_attempt_ends_dead(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus) as s, running(sleepy_agent(calls), bus):
        await s.client.submit(
            "work", [30.0], task_id="stuck", timeout_s=0.3, max_attempts=2, backoff=FAST
        )
        record = await s.client.wait("stuck", timeout_s=30)
    assert record.status == "dead"
    assert calls.cancelled == ["stuck#1", "stuck#2"]
    assert [a.error.error_type for a in record.attempts if a.error] == ["TaskTimeoutError"] * 2


async def test_agent_never_starts_a_task_past_its_deadline(bus: Bus) -> None:
    """The agent's own check (no scheduler here): expired result, no TaskStarted."""
    calls = Calls()
    past = utcnow() - timedelta(seconds=1)
    task = Task(task_id="late", capability="work", input=msgspec.Raw(b"[0.01]"), deadline=past)
    await bus.js.publish(bus.names.task_subject("work"), encode(task))
    sub = await bus.js.pull_subscribe(bus.names.results_all(), durable="test-results")
    try:
        async with running(sleepy_agent(calls), bus):
            (msg,) = await sub.fetch(1, timeout=10)
            report = decode_report(msg.data)
            await eventually(lambda: _empty(bus), what="expired task termed")
            with pytest.raises(TimeoutError):  # nothing else: no TaskStarted, no retry
                await sub.fetch(1, timeout=1)
    finally:
        await sub.unsubscribe()
    assert isinstance(report, TaskResult) and not isinstance(report, TaskStarted)
    assert report.status == "expired" and report.error is not None
    assert report.error.error_type == "DeadlineExceeded"
    assert calls.seen == []


@pytest.mark.timeout(60)
async def test_retry_that_would_start_after_the_deadline_expires_now(bus: Bus) -> None:
    calls = Calls()
    agent = make_agent()

    @agent.handler("work")
    async def work(ctx: TaskContext, _: Any) -> None:
        calls.seen.append((ctx.task_id, ctx.attempt))
        raise RetryableTaskError("upstream busy")

    slow = Backoff(initial_s=30.0, factor=2.0, max_s=60.0, jitter=0.0)
    async with scheduler(bus) as s, running(agent, bus):
        deadline = utcnow() + timedelta(seconds=10)
        await s.client.submit("work", None, task_id="soon", deadline=deadline, backoff=slow)
        record = await s.client.wait("soon", timeout_s=8)  # long before the 30 s retry
    assert record.status == "expired"
    assert calls.attempts("soon") == [1]
    assert record.error is not None and record.error.message == "upstream busy"
    assert [(a.number, a.status) for a in record.attempts] == [(1, "failed")]


@pytest.mark.timeout(60)
async def test_sweep_expires_a_queued_task_nobody_takes(bus: Bus) -> None:
    async with scheduler(bus, sweep_interval_s=0.3) as s:
        deadline = utcnow() + timedelta(seconds=1)
        await s.client.submit("nobody", {"x": 1}, task_id="q1", deadline=deadline)
        await s.client.submit("nobody", {"x": 2}, task_id="q2")  # no deadline: stays
        record = await s.client.wait("q1", timeout_s=20)
        assert await eventually(lambda: _count(bus, 1), what="expired message deleted")
        swept = "agentbus_scheduler_swept_messages_total"
        await eventually(lambda: s.metric(swept, {"reason": "expired"}) == 1, what="count")
        history = await s.client.history("q1")
        assert (await s.client.get("q2")).status == "queued"
    assert record.status == "expired" and record.attempts == []
    assert record.finished_at is not None and record.finished_at >= deadline
    assert record.error is not None and record.error.error_type == "DeadlineExceeded"
    assert [e.status for e in history] == ["queued", "expired"]
    assert history[-1].reason == "deadline passed while queued"


@pytest.mark.timeout(60)
async def test_task_started_before_its_deadline_runs_to_the_end(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus, sweep_interval_s=0.2) as s, running(sleepy_agent(calls), bus):
        deadline = utcnow() + timedelta(seconds=1.5)
        await s.client.submit("work", [3.0], task_id="long", deadline=deadline)
        await eventually(lambda: status_is(s.client, "long", "running"), what="running")
        record = await s.client.wait("long", timeout_s=30)
    assert record.status == "succeeded"  # sweeps ran during it, but it had started
    assert calls.cancelled == []


async def _count(bus: Bus, n: int) -> bool:
    return await stream_messages(bus) == n


async def _empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0
