"""Reports of a dead scheduler come back soon; attempt numbers survive a count reset."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import msgspec
import pytest
from nats.js.api import ConsumerConfig, ConsumerInfo

from agentbus.bus import Bus
from agentbus.messages import TaskRecord, TaskResult, TaskStarted, encode, utcnow
from agentbus.names import Names
from agentbus_scheduler.settings import SchedulerSettings
from agentbus_scheduler.tasks.lifecycle import apply_report
from agentbus_scheduler.tasks.records import Records
from tests._harness.polling import eventually
from tests._harness.work_stream import bind_like_an_agent, scheduler, status_is

pytestmark = pytest.mark.nats


def _result(
    task_id: str, *, agent: str, attempt: int, started_at: datetime | None = None
) -> TaskResult:
    now = utcnow()
    return TaskResult(
        task_id=task_id,
        agent_id=agent,
        attempt=attempt,
        status="succeeded",
        started_at=started_at or now - timedelta(seconds=1),
        finished_at=now,
        output=msgspec.Raw(b'"ok"'),
        ran=True,
    )


async def _report(bus: Bus, capability: str, report: TaskStarted | TaskResult) -> None:
    await bus.js.publish(bus.names.result_subject(capability, report.agent_id), encode(report))


def test_results_ack_wait_is_short_by_default() -> None:
    assert SchedulerSettings().results_ack_wait_s <= 5.0


async def test_a_report_read_by_a_dead_scheduler_is_applied_by_another_soon(bus: Bus) -> None:
    async with scheduler(bus) as sched:
        await sched.client.submit("work", 1, task_id="orphaned")
    # the scheduler that dies: it fetched the report and never acks it
    await _report(bus, "work", _result("orphaned", agent="a1", attempt=1))
    dead = await bus.js.pull_subscribe_bind(Names.RESULTS_CONSUMER, stream=bus.names.results_stream)
    (fetched,) = await dead.fetch(1, timeout=5)
    assert fetched.metadata.num_delivered == 1
    await dead.unsubscribe()
    loop = asyncio.get_running_loop()
    since = loop.time()
    async with scheduler(bus) as sched:  # the survivor, with the default AckWait
        ack_wait_s = sched.settings.results_ack_wait_s
        await eventually(
            lambda: status_is(sched.client, "orphaned", "succeeded"),
            timeout_s=ack_wait_s + 10.0,
            what="the report applied by the other scheduler",
        )
    assert loop.time() - since < 30.0  # the former AckWait


async def test_a_slow_scheduler_renews_reports_it_is_still_applying(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = Records.update

    async def slow_update(self: Records, task_id: str, *args: object, **kwargs: object) -> object:
        if task_id == "slow":
            await asyncio.sleep(3.0)  # three AckWaits
        return await update(self, task_id, *args, **kwargs)  # type: ignore[arg-type]

    async with scheduler(bus) as sched:  # another instance admits it: not in the cache
        await sched.client.submit("work", 1, task_id="slow")
    monkeypatch.setattr(Records, "update", slow_update)
    async with scheduler(bus, results_ack_wait_s=1.0) as sched:
        await _report(bus, "work", _result("slow", agent="a1", attempt=1))
        await eventually(
            lambda: status_is(sched.client, "slow", "succeeded"), what="slow report applied"
        )

        async def drained() -> ConsumerInfo | None:
            info = await bus.js.consumer_info(bus.names.results_stream, Names.RESULTS_CONSUMER)
            return info if info.num_pending == 0 and info.num_ack_pending == 0 else None

        info = await eventually(drained, what="results consumer drained")
        assert info.delivered is not None and info.delivered.consumer_seq == 1  # sent once
        assert sched.metric("agentbus_scheduler_duplicate_results_total") == 0


def _record(*attempts: tuple[int, str, int]) -> TaskRecord:
    base = utcnow()
    record = TaskRecord(
        task_id="t", capability="c", status="queued", created_at=base, updated_at=base
    )
    for number, agent, at_s in attempts:
        started = TaskStarted(
            task_id="t", agent_id=agent, attempt=number, started_at=base + timedelta(seconds=at_s)
        )
        updated, _ = apply_report(record, started, now=utcnow())
        assert updated is not None
        record = updated
    return record


def test_a_delivery_count_that_started_over_is_renumbered_from_the_record() -> None:
    record = _record((1, "a1", 1), (2, "a2", 2))
    again = TaskStarted(
        task_id="t", agent_id="a1", attempt=1, started_at=record.created_at + timedelta(seconds=3)
    )
    renumbered, event = apply_report(record, again, now=utcnow())
    assert renumbered is not None and isinstance(event, object)
    assert [(a.number, a.agent_id, a.status) for a in renumbered.attempts] == [
        (1, "a1", "lost"),
        (2, "a2", "lost"),
        (3, "a1", "running"),
    ]
    result = _result("t", agent="a1", attempt=1, started_at=again.started_at)
    done, _ = apply_report(renumbered, result, now=utcnow())
    assert done is not None and done.status == "succeeded"
    assert [(a.number, a.status) for a in done.attempts] == [
        (1, "lost"),
        (2, "lost"),
        (3, "succeeded"),
    ]
    # a redelivered report of a recorded delivery changes nothing
    assert apply_report(renumbered, again, now=utcnow()) == (None, None)


async def test_attempts_stay_complete_when_the_consumer_is_recreated(bus: Bus) -> None:
    async with scheduler(bus) as sched:
        await sched.client.submit("work", 1, task_id="reset")
        sub = await bind_like_an_agent(bus, "work", ack_wait_s=30.0)
        (first,) = await sub.fetch(1, timeout=10)
        assert first.metadata.num_delivered == 1
        started = TaskStarted(task_id="reset", agent_id="a1", attempt=1, started_at=utcnow())
        await _report(bus, "work", started)
        await eventually(lambda: status_is(sched.client, "reset", "running"), what="running")
        # what a nats-server SIGKILL can do: the consumer's delivery state is gone
        await sub.unsubscribe()
        durable = Names.task_consumer("work")
        config: ConsumerConfig = (
            await bus.js.consumer_info(bus.names.tasks_stream, durable)
        ).config
        await bus.js.delete_consumer(bus.names.tasks_stream, durable)
        await bus.js.add_consumer(bus.names.tasks_stream, config)
        sub = await bus.js.pull_subscribe_bind(durable, stream=bus.names.tasks_stream)
        (second,) = await sub.fetch(1, timeout=10)
        assert second.metadata.num_delivered == 1  # the count started over
        again = TaskStarted(task_id="reset", agent_id="a1", attempt=1, started_at=utcnow())
        await _report(bus, "work", again)

        async def two_attempts() -> list[tuple[int, str]] | None:
            record = await sched.client.get("reset")
            seen: list[tuple[int, str]] = [(a.number, a.status) for a in record.attempts]
            return seen if len(seen) == 2 else None

        assert await eventually(two_attempts, what="the second attempt recorded") == [
            (1, "lost"),
            (2, "running"),
        ]
        result = _result("reset", agent="a1", attempt=1, started_at=again.started_at)
        await _report(bus, "work", result)
        await second.ack()
        done = await sched.client.wait("reset", timeout_s=10)
        assert [(a.number, a.status) for a in done.attempts] == [(1, "lost"), (2, "succeeded")]
        await sub.unsubscribe()
