"""Reports must be attributable: a forged report is refused, the real result wins."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import (
    ErrorEvent,
    TaskRecord,
    TaskResult,
    TaskStarted,
    encode,
    utcnow,
)
from agentbus.names import Names
from agentbus_scheduler.tasks.attribution import check_record, check_reporter
from tests._harness.polling import eventually
from tests._harness.services import Scheduler

pytestmark = pytest.mark.nats

REFUSED = "agentbus_scheduler_reports_refused_total"


def _started(task_id: str, agent: str, attempt: int = 1) -> TaskStarted:
    return TaskStarted(task_id=task_id, agent_id=agent, attempt=attempt, started_at=utcnow())


def _result(task_id: str, output: str, agent: str, attempt: int = 1) -> TaskResult:
    now = utcnow()
    return TaskResult(
        task_id=task_id,
        agent_id=agent,
        attempt=attempt,
        status="succeeded",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        output=msgspec.Raw(msgspec.json.encode(output)),
        ran=True,
    )


async def _publish(bus: Bus, subject: str, report: TaskStarted | TaskResult) -> None:
    await bus.js.publish(subject, encode(report))


async def _refused(scheduler: Scheduler, reason: str, count: int = 1) -> None:
    async def counted() -> bool:
        return scheduler.metric(REFUSED, {"reason": reason}) == count

    await eventually(counted, what=f"{count} report(s) refused for {reason}")


async def _error_event(sub: object, task_id: str) -> ErrorEvent:
    while True:
        msg = await sub.next_msg(timeout=5)  # type: ignore[attr-defined]
        event = msgspec.json.decode(msg.data, type=ErrorEvent)
        if task_id in event.reason:
            return event


async def _real_result_wins(bus: Bus, scheduler: Scheduler, task_id: str) -> None:
    await _publish(
        bus, bus.names.result_subject("echo", "a1"), _result(task_id, "real", agent="a1")
    )
    record = await scheduler.client.wait(task_id, timeout_s=10)
    assert record.status == "succeeded"
    assert msgspec.json.decode(record.output) == "real"
    assert record.agent_id == "a1"


async def test_a_report_claiming_another_agent_id_is_refused(
    bus: Bus, scheduler: Scheduler
) -> None:
    sub = await bus.nc.subscribe(bus.names.event_subject("error", "scheduler"))
    await scheduler.client.submit("echo", None, task_id="forged-id")
    # mallory may publish only on its own subject, and claims to be a1
    subject = bus.names.result_subject("echo", "mallory")
    await _publish(bus, subject, _result("forged-id", "forged", agent="a1"))
    await _refused(scheduler, "agent")
    event = await _error_event(sub, "forged-id")
    assert (event.service, event.subject) == ("scheduler", subject)
    assert "'a1'" in event.reason and "mallory" in event.reason
    await sub.unsubscribe()
    assert (await scheduler.client.get("forged-id")).status == "queued"
    await _real_result_wins(bus, scheduler, "forged-id")


async def test_a_report_on_a_subject_without_agent_id_is_refused(
    bus: Bus, scheduler: Scheduler
) -> None:
    await scheduler.client.submit("echo", None, task_id="no-id")
    await _publish(bus, f"{bus.names.prefix}.results.echo.a1.x", _result("no-id", "x", "a1"))
    await _refused(scheduler, "subject")
    await _real_result_wins(bus, scheduler, "no-id")


async def test_a_report_for_another_capability_is_refused(bus: Bus, scheduler: Scheduler) -> None:
    sub = await bus.nc.subscribe(bus.names.event_subject("error", "scheduler"))
    await scheduler.client.submit("echo", None, task_id="other-cap")
    subject = bus.names.result_subject("other", "mallory")
    await _publish(bus, subject, _result("other-cap", "forged", agent="mallory"))
    await _refused(scheduler, "capability")
    event = await _error_event(sub, "other-cap")
    assert event.subject == subject
    await sub.unsubscribe()
    await _real_result_wins(bus, scheduler, "other-cap")


async def test_records_the_scheduler_never_cached_are_checked_too(
    bus: Bus, scheduler: Scheduler
) -> None:
    # written behind the scheduler's back: its reports take the uncached path
    now = utcnow()
    record = TaskRecord(
        task_id="uncached", capability="echo", status="queued", created_at=now, updated_at=now
    )
    kv = await bus.kv(bus.names.tasks_bucket)
    await kv.create("uncached", encode(record))
    forged = _result("uncached", "forged", agent="mallory")
    await _publish(bus, bus.names.result_subject("other", "mallory"), forged)
    await _refused(scheduler, "capability")
    await _real_result_wins(bus, scheduler, "uncached")


def test_the_checks_by_themselves() -> None:
    names = Names("t")
    report = _result("t1", "x", agent="a1")
    assert check_reporter(names, "t.results.echo.a1", report) is None
    assert check_reporter(names, "t.results.echo", report).reason == "subject"  # type: ignore[union-attr]
    assert check_reporter(names, "u.results.echo.a1", report).reason == "subject"  # type: ignore[union-attr]
    assert check_reporter(names, "t.results.echo.a2", report).reason == "agent"  # type: ignore[union-attr]
    now = utcnow()
    record = TaskRecord(
        task_id="t1", capability="echo", status="queued", created_at=now, updated_at=now
    )
    assert check_record(record, report, "echo") is None
    assert check_record(record, report, "other").reason == "capability"  # type: ignore[union-attr]
