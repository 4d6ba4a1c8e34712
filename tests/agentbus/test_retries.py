"""Retries: retryable vs fatal errors, exponential backoff, attempts in the record, dead.

Real nats-server, in-process scheduler, in-process agent: the agent decides
(``agentbus.retry.decide``) and naks with the backoff delay or terms; the scheduler
records every attempt with its timings and error.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.errors import ContractError, FatalTaskError, RetryableTaskError, TaskTimeoutError
from agentbus.messages import Backoff, Task, utcnow
from agentbus.retry import backoff_s, decide, is_retryable
from agentbus.runtime import TaskContext
from tests._harness.polling import eventually
from tests._harness.work_stream import (
    FAST,
    Calls,
    make_agent,
    running,
    scheduler,
    stream_messages,
)

pytestmark = pytest.mark.nats


class Job(msgspec.Struct, frozen=True):
    fail_times: int = 0
    error: str = "retryable"


def flaky_agent(calls: Calls) -> Any:
    agent = make_agent()

    @agent.handler("work")
    async def work(ctx: TaskContext, job: Job) -> str:
        calls.seen.append((ctx.task_id, ctx.attempt))
        if ctx.attempt <= job.fail_times:
            if job.error == "fatal":
                raise FatalTaskError(f"attempt {ctx.attempt}: cannot be done")
            if job.error == "value":
                raise ValueError(f"attempt {ctx.attempt}: flaky dependency")
            raise RetryableTaskError(f"attempt {ctx.attempt}: try again")
        return f"done on attempt {ctx.attempt}"

    return agent


# -- the rule, as a pure function -----------------------------------------------------


def _task(**kw: Any) -> Task:
    return Task(task_id="t", capability="c", **kw)


def test_decide_retry_fail_dead_expire() -> None:
    rng = random.Random(7)
    task = _task(max_attempts=3, backoff=Backoff(initial_s=1, factor=2, max_s=60, jitter=0))
    retry = decide(task, 1, RetryableTaskError("x"), rng=rng)
    assert (retry.action, retry.retry_in_s, retry.error.retryable) == ("retry", 1.0, True)
    assert decide(task, 2, RuntimeError("x"), rng=rng).retry_in_s == 2.0
    fatal = decide(task, 1, FatalTaskError("x"))
    assert (fatal.action, fatal.retry_in_s, fatal.error.retryable) == ("fail", None, False)
    assert decide(task, 1, ContractError("bad input")).action == "fail"
    assert decide(task, 1, msgspec.ValidationError("bad")).action == "fail"
    dead = decide(task, 3, RetryableTaskError("x"))
    assert (dead.action, dead.error.error_type) == ("dead", "RetryableTaskError")
    assert decide(task, 3, FatalTaskError("x")).action == "fail"  # fatal wins over exhausted
    now = utcnow()
    soon = _task(max_attempts=3, deadline=now + timedelta(seconds=0.5), backoff=task.backoff)
    assert decide(soon, 1, RetryableTaskError("x"), now=now).action == "expire"
    later = _task(max_attempts=3, deadline=now + timedelta(seconds=5), backoff=task.backoff)
    assert decide(later, 1, RetryableTaskError("x"), now=now).action == "retry"


def test_other_exceptions_are_retryable_decode_errors_fatal() -> None:
    assert is_retryable(RuntimeError("boom"))
    assert is_retryable(TimeoutError())
    assert is_retryable(TaskTimeoutError(1.0))
    assert not is_retryable(ContractError("bad"))
    assert not is_retryable(msgspec.DecodeError("bad"))
    assert not is_retryable(FatalTaskError("no"))


def test_backoff_is_exponential_capped_and_jittered_within_bounds() -> None:
    policy = Backoff(initial_s=1, factor=3, max_s=20, jitter=0.5)
    rng = random.Random(1)
    for n, full in [(1, 1.0), (2, 3.0), (3, 9.0), (4, 20.0), (9, 20.0)]:
        draws = [backoff_s(policy, n, rng=rng) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in draws), (n, min(draws), max(draws))
        assert max(draws) - min(draws) > full * 0.3  # jittered, not constant


# -- end to end ---------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_retryable_failures_back_off_then_succeed(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus) as s, running(flaky_agent(calls), bus):
        await s.client.submit("work", Job(fail_times=2), task_id="r1", max_attempts=4, backoff=FAST)
        record = await s.client.wait("r1", timeout_s=30)

    assert record.status == "succeeded"
    assert msgspec.json.decode(record.output) == "done on attempt 3"
    assert calls.attempts("r1") == [1, 2, 3]
    assert [(a.number, a.status) for a in record.attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    first, second, third = record.attempts
    for failed in (first, second):
        assert failed.error is not None and failed.error.retryable
        assert failed.error.error_type == "RetryableTaskError"
        assert failed.finished_at is not None and failed.finished_at >= failed.started_at
    assert first.error is not None and first.error.message == "attempt 1: try again"
    # the next attempt started no earlier than the backoff delay after the failure
    assert first.finished_at is not None and second.finished_at is not None
    assert second.started_at - first.finished_at >= timedelta(seconds=0.2)
    assert third.started_at - second.finished_at >= timedelta(seconds=0.4)
    assert record.next_attempt_at is None and record.error is None


@pytest.mark.timeout(60)
async def test_fatal_error_fails_at_once_and_leaves_the_queue(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus) as s, running(flaky_agent(calls), bus):
        await s.client.submit(
            "work", Job(fail_times=5, error="fatal"), task_id="f1", max_attempts=5, backoff=FAST
        )
        record = await s.client.wait("f1", timeout_s=30)
        assert await eventually(lambda: _empty(bus), what="work stream empty")
        await asyncio.sleep(1.0)  # no redelivery follows a term
    assert record.status == "failed"
    assert calls.attempts("f1") == [1]
    assert record.error is not None and record.error.error_type == "FatalTaskError"
    assert not record.error.retryable
    assert [(a.number, a.status) for a in record.attempts] == [(1, "failed")]


@pytest.mark.timeout(60)
async def test_other_exceptions_retry_but_bad_input_fails_at_once(bus: Bus) -> None:
    calls = Calls()
    async with scheduler(bus) as s, running(flaky_agent(calls), bus):
        await s.client.submit("work", Job(fail_times=1, error="value"), task_id="v1", backoff=FAST)
        await s.client.submit("work", {"fail_times": "not a number"}, task_id="bad", backoff=FAST)
        flaky = await s.client.wait("v1", timeout_s=30)
        bad = await s.client.wait("bad", timeout_s=30)
    assert flaky.status == "succeeded" and calls.attempts("v1") == [1, 2]
    assert flaky.attempts[0].error is not None
    assert flaky.attempts[0].error.error_type == "ValueError"
    assert bad.status == "failed" and len(bad.attempts) == 1
    assert bad.error is not None and bad.error.error_type == "ContractError"


@pytest.mark.timeout(60)
async def test_exhausted_attempts_end_dead_with_every_error(bus: Bus) -> None:
    calls = Calls()
    agent = flaky_agent(calls)
    async with scheduler(bus) as s, running(agent, bus):
        await s.client.submit(
            "work", Job(fail_times=99), task_id="d1", max_attempts=3, backoff=FAST
        )
        record = await s.client.wait("d1", timeout_s=30)
        assert await eventually(lambda: _empty(bus), what="work stream empty")
        dead = await s.client.dead_tasks()
        assert s.metric("agentbus_scheduler_results_applied_total", {"status": "dead"}) == 1
        assert s.metric("agentbus_scheduler_dead_letters_total", {"source": "agent"}) == 1
    assert record.status == "dead"
    assert calls.attempts("d1") == [1, 2, 3]
    assert [(a.number, a.status) for a in record.attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    messages = [a.error.message for a in record.attempts if a.error is not None]
    assert messages == [f"attempt {n}: try again" for n in (1, 2, 3)]
    assert record.error is not None and record.error.message == "attempt 3: try again"
    assert record.finished_at is not None
    assert [t.task_id for t in dead.tasks] == ["d1"] and dead.total == 1
    metric = "agentbus_agent_task_attempts_total"
    assert (
        agent.registry.get_sample_value(metric, {"capability": "work", "outcome": "retried"}) == 2
    )
    assert agent.registry.get_sample_value(metric, {"capability": "work", "outcome": "dead"}) == 1


async def _empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0
