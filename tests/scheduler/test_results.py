from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import nats.js.errors
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import NotFoundError, UnavailableError
from agentbus.messages import (
    ErrorEvent,
    ErrorInfo,
    GetTask,
    TaskEvent,
    TaskRecord,
    TaskReply,
    TaskResult,
    TaskStarted,
    encode,
    utcnow,
)
from agentbus.names import Names
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings
from tests._harness.polling import eventually
from tests._harness.services import Scheduler


def _started(task_id: str, *, agent: str = "a1", attempt: int = 1) -> TaskStarted:
    return TaskStarted(task_id=task_id, agent_id=agent, attempt=attempt, started_at=utcnow())


def _result(
    task_id: str,
    output: object = None,
    *,
    agent: str = "a1",
    attempt: int = 1,
    error: str | None = None,
) -> TaskResult:
    now = utcnow()
    return TaskResult(
        task_id=task_id,
        agent_id=agent,
        attempt=attempt,
        status="failed" if error else "succeeded",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        output=msgspec.Raw(msgspec.json.encode(output)),
        error=ErrorInfo(error_type="ValueError", message=error) if error else None,
    )


async def _report(bus: Bus, capability: str, report: TaskStarted | TaskResult) -> None:
    await bus.js.publish(bus.names.result_subject(capability, report.agent_id), encode(report))


async def _publish_raw(bus: Bus, capability: str, data: bytes) -> None:
    await bus.js.publish(bus.names.result_subject(capability, "a1"), data)


async def _drained(bus: Bus) -> bool:
    info = await bus.js.consumer_info(bus.names.results_stream, Names.RESULTS_CONSUMER)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _status(scheduler: Scheduler, task_id: str) -> str:
    return (await scheduler.client.get(task_id)).status


async def _last_event(bus: Bus, entity: str, kind: str) -> bytes:
    """The last event on a subject, waiting for it (it follows the record write)."""
    subject = bus.names.event_subject(entity, kind)
    if entity == "task":  # <p>.events.task.<status>.<task_id>
        subject = bus.names.task_event_subject(kind, "*")

    async def published() -> bool:
        try:
            await bus.js.get_last_msg(bus.names.events_stream, subject)
        except nats.js.errors.NotFoundError:
            return False
        return True

    await eventually(published, what=f"an event on {subject}")
    msg = await bus.js.get_last_msg(bus.names.events_stream, subject)
    assert msg.data is not None
    return msg.data


async def test_started_and_result_are_applied(bus: Bus, scheduler: Scheduler) -> None:
    await scheduler.client.submit("echo", {"q": 1}, task_id="r1")

    await _report(bus, "echo", _started("r1", agent="agent-7"))

    async def running() -> bool:
        return await _status(scheduler, "r1") == "running"

    await eventually(running, what="record running")
    record = await scheduler.client.get("r1")
    assert record.agent_id == "agent-7"
    assert [(a.number, a.agent_id, a.status) for a in record.attempts] == [
        (1, "agent-7", "running")
    ]

    await _report(bus, "echo", _result("r1", {"answer": 42}, agent="agent-7"))
    done = await scheduler.client.wait("r1", timeout_s=10)
    assert done.status == "succeeded"
    assert msgspec.json.decode(done.output) == {"answer": 42}
    assert await scheduler.client.output(done) == {"answer": 42}
    assert done.finished_at is not None
    assert [(a.number, a.status) for a in done.attempts] == [(1, "succeeded")]
    assert done.attempts[0].finished_at is not None

    event = msgspec.json.decode(await _last_event(bus, "task", "succeeded"), type=TaskEvent)
    assert (event.task_id, event.status, event.attempt, event.agent_id) == (
        "r1",
        "succeeded",
        1,
        "agent-7",
    )
    running_event = msgspec.json.decode(await _last_event(bus, "task", "running"), type=TaskEvent)
    assert running_event.task_id == "r1"
    assert (
        scheduler.metric("agentbus_scheduler_results_applied_total", {"status": "succeeded"}) == 1
    )
    await eventually(lambda: _drained(bus), what="results acked")


async def test_failed_result_is_terminal(bus: Bus, scheduler: Scheduler) -> None:
    await scheduler.client.submit("echo", {"fail": "boom"}, task_id="f1")
    await _report(bus, "echo", _result("f1", error="boom"))
    record = await scheduler.client.wait("f1", timeout_s=10)
    assert record.status == "failed"
    assert record.error is not None
    assert record.error.message == "boom"
    event = msgspec.json.decode(await _last_event(bus, "task", "failed"), type=TaskEvent)
    assert event.error is not None
    assert event.error.message == "boom"


async def test_duplicate_result_is_counted_and_dropped(bus: Bus, scheduler: Scheduler) -> None:
    await scheduler.client.submit("echo", None, task_id="d1")
    await _report(bus, "echo", _result("d1", "first", agent="a1"))
    await _report(bus, "echo", _result("d1", error="second", agent="a2", attempt=2))

    async def counted() -> bool:
        return scheduler.metric("agentbus_scheduler_duplicate_results_total") == 1

    await eventually(counted, what="duplicate counted")
    await eventually(lambda: _drained(bus), what="results acked")
    record = await scheduler.client.get("d1")
    assert record.status == "succeeded"
    assert msgspec.json.decode(record.output) == "first"
    assert record.agent_id == "a1"
    assert [a.number for a in record.attempts] == [1]


async def test_late_started_never_reopens_a_finished_task(bus: Bus, scheduler: Scheduler) -> None:
    await scheduler.client.submit("echo", None, task_id="late")
    await _report(bus, "echo", _result("late", "done"))
    await scheduler.client.wait("late", timeout_s=10)
    await _report(bus, "echo", _started("late", agent="a9", attempt=2))
    await eventually(lambda: _drained(bus), what="results acked")
    record = await scheduler.client.get("late")
    assert record.status == "succeeded"
    assert record.agent_id == "a1"


async def test_malformed_reports_are_terminated_and_counted(bus: Bus, scheduler: Scheduler) -> None:
    sub = await bus.nc.subscribe(bus.names.event_subject("error", "scheduler"))
    await _publish_raw(bus, "echo", b"not json at all")
    await _publish_raw(bus, "echo", b'{"type": "TaskResult", "task_id": "x"}')

    async def counted() -> bool:
        value = scheduler.metric(
            "agentbus_bad_messages_total", {"service": "scheduler", "source": "results"}
        )
        return value == 2

    await eventually(counted, what="bad messages counted")
    error = msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=ErrorEvent)
    assert error.subject == bus.names.result_subject("echo", "a1")
    await sub.unsubscribe()

    # The consumer keeps working after bad input.
    await scheduler.client.submit("echo", None, task_id="after")
    await _report(bus, "echo", _result("after", 1))
    assert (await scheduler.client.wait("after", timeout_s=10)).status == "succeeded"
    await eventually(lambda: _drained(bus), what="nothing left to redeliver")


async def test_report_for_unknown_task_is_dropped(bus: Bus, scheduler: Scheduler) -> None:
    await _report(bus, "echo", _result("ghost", 1))

    async def counted() -> bool:
        return scheduler.metric("agentbus_scheduler_orphan_reports_total") == 1

    await eventually(counted, what="orphan counted")
    await eventually(lambda: _drained(bus), what="orphan acked")


async def test_many_results_in_one_batch(bus: Bus, scheduler: Scheduler) -> None:
    ids = [f"m{i}" for i in range(200)]
    tasks = [await scheduler.client.build_task("echo", i, task_id=t) for i, t in enumerate(ids)]
    await scheduler.client.submit_many(tasks)
    for i, task_id in enumerate(ids):
        await _report(bus, "echo", _started(task_id))
        await _report(bus, "echo", _result(task_id, i))
    records: list[TaskRecord] = [r async for r in scheduler.client.wait_many(ids, timeout_s=30)]
    assert sorted(r.task_id for r in records) == sorted(ids)
    assert all(r.status == "succeeded" for r in records)
    assert {r.task_id: msgspec.json.decode(r.output) for r in records} == {
        t: i for i, t in enumerate(ids)
    }


async def test_reports_sent_while_the_scheduler_is_down_are_applied(bus: Bus) -> None:
    settings = SchedulerSettings(results_fetch_timeout_s=0.2)
    client = Client(bus)

    async def run_until(stop: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(serve(bus, stop, settings, CollectorRegistry()))

    stop = asyncio.Event()
    first = await run_until(stop)
    await eventually(lambda: _consumer_exists(bus), what="results consumer created")
    await eventually(lambda: _serving(client), what="scheduler serving")
    record = await client.submit("echo", None, task_id="offline")
    stop.set()
    await first

    await _report(bus, "echo", _result("offline", "late but applied"))
    assert (await client.get("offline")).status == "queued"

    stop = asyncio.Event()
    second = await run_until(stop)  # the durable consumer is re-created idempotently
    try:
        done = await client.wait(record.task_id, timeout_s=10)
        assert msgspec.json.decode(done.output) == "late but applied"
    finally:
        stop.set()
        await second


async def _serving(client: Client) -> bool:
    try:
        await client.bus.request(
            client.names.endpoint("scheduler", "get"), GetTask(task_id="none"), TaskReply
        )
    except NotFoundError:
        return True
    except UnavailableError:
        return False
    return True


async def _consumer_exists(bus: Bus) -> bool:
    try:
        info = await bus.js.consumer_info(bus.names.results_stream, Names.RESULTS_CONSUMER)
    except Exception:
        return False
    return bool(info.config.ack_wait == SchedulerSettings().results_ack_wait_s)
