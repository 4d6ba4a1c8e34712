"""Poison input: whatever arrives on a subject the runtime or the scheduler consumes,
a message that does not decode is terminated (or answered 400) at once, reported as an
``ErrorEvent`` naming its subject and a reason, counted in
``agentbus_bad_messages_total``, and the consumer keeps serving.

Other services' subjects have their own tests (registry KV, supervisor KV, checkpoint
endpoints, gateway HTTP); ``docs/protocol.md`` ("Poison input") lists them all.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import Task, encode
from agentbus.runtime import Agent, TaskContext
from tests._harness.polling import eventually
from tests._harness.work_stream import (
    ErrorEvents,
    make_agent,
    running,
    scheduler,
    stream_messages,
)

pytestmark = pytest.mark.nats
BAD = "agentbus_bad_messages_total"


def echo_agent() -> Agent:
    agent = make_agent()

    @agent.handler("work")
    async def work(ctx: TaskContext, value: Any) -> Any:
        return value

    return agent


async def _empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0


@pytest.mark.timeout(60)
async def test_agent_terminates_poison_tasks_and_keeps_serving(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    agent = echo_agent()
    subject = bus.names.task_subject("work")
    wrong_queue = Task(task_id="misrouted", capability="other", input=msgspec.Raw(b"1"))
    async with scheduler(bus) as s, running(agent, bus):
        await bus.js.publish(subject, b"\x00\xff not json")
        await bus.js.publish(subject, b'{"type": "Task", "capability": "work"}')  # no task_id
        await bus.js.publish(subject, encode(wrong_queue))

        async def counted() -> bool:
            return (
                agent.registry.get_sample_value(BAD, {"service": "agent", "source": "tasks"}) == 3
            )

        await eventually(counted, what="3 poison tasks counted")
        await eventually(lambda: _empty(bus), what="poison terminated, not redelivered")
        record = await s.client.submit("work", {"still": "serving"}, task_id="after")
        done = await s.client.wait(record.task_id, timeout_s=20)
        await eventually(lambda: len(errors.about(subject)) == 3, what="3 error events")
    assert done.status == "succeeded"
    reasons = [e.reason for e in errors.about(subject)]
    assert any("does not decode" in r for r in reasons)
    assert any("'misrouted'" in r and "'other'" in r for r in reasons)
    assert all(e.service == "agent:rel-1" for e in errors.about(subject))


@pytest.mark.timeout(60)
async def test_scheduler_endpoints_answer_400_to_garbage(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    async with scheduler(bus) as s:
        for verb in ("submit", "submit_batch", "get", "list", "resubmit", "deploy"):
            subject = bus.names.endpoint("scheduler", verb)
            reply = await bus.nc.request(subject, b"{not json", timeout=5)
            assert reply.headers is not None
            assert reply.headers.get("Nats-Service-Error-Code") == "400", verb
            assert s.metric(BAD, {"service": "scheduler", "source": verb}) == 1
        await eventually(lambda: len(errors.events) >= 6, what="error events")
        assert (await s.client.dead_tasks()).total == 0  # still serving
    subjects = {e.subject for e in errors.events}
    assert bus.names.endpoint("scheduler", "resubmit") in subjects


@pytest.mark.timeout(60)
async def test_corrupt_task_record_terminates_its_reports(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    async with scheduler(bus) as s, running(echo_agent(), bus):
        kv = await bus.kv(bus.names.tasks_bucket)
        await s.client.submit("nobody", None, task_id="corrupt")
        await kv.put("corrupt", b"{garbage")
        report = b'{"type":"TaskStarted","task_id":"corrupt","agent_id":"a","attempt":1,'
        report += b'"started_at":"2026-01-01T00:00:00Z"}'
        await bus.js.publish(bus.names.result_subject("nobody", "a"), report)

        async def counted() -> bool:
            return s.metric(BAD, {"service": "scheduler", "source": "task_records"}) == 1

        await eventually(counted, what="corrupt record counted")
        info = await bus.js.consumer_info(bus.names.results_stream, "scheduler-results")
        assert info.num_ack_pending == 0  # terminated, not retried
        done = await s.client.wait((await s.client.submit("work", 5)).task_id, timeout_s=20)
        assert done.status == "succeeded"  # the results consumer keeps going
    assert any("corrupt" in e.reason for e in errors.events)


@pytest.mark.timeout(60)
async def test_bad_advisory_is_terminated_and_the_next_one_processed(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    async with scheduler(bus, sweep_interval_s=600) as s:
        advisory_subject = bus.names.max_deliveries_advisories().replace("*", "cap-work")
        await bus.js.publish(advisory_subject, b"not an advisory")

        async def counted() -> bool:
            return s.metric(BAD, {"service": "scheduler", "source": "task_advisories"}) == 1

        await eventually(counted, what="bad advisory counted")
        # a well-formed advisory for a real stuck message still gets processed
        await s.client.submit("work", None, task_id="stuck")
        raw = await bus.js.get_last_msg(bus.names.tasks_stream, bus.names.task_subject("work"))
        advisory = {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": bus.names.tasks_stream,
            "consumer": "cap-work",
            "stream_seq": raw.seq,
            "deliveries": 101,
        }
        await bus.js.publish(advisory_subject, msgspec.json.encode(advisory))
        record = await s.client.wait("stuck", timeout_s=20)
        assert record.status == "dead"
        assert await eventually(lambda: _empty(bus), what="message deleted")
    assert any(e.subject == advisory_subject for e in errors.events)


@pytest.mark.timeout(60)
async def test_scheduler_skips_a_deployment_that_does_not_decode(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    async with scheduler(bus) as s:
        kv = await bus.kv(bus.names.deployments_bucket)
        await kv.put("broken", b"[1, 2")

        async def counted() -> bool:
            return s.metric(BAD, {"service": "scheduler", "source": "deployments"}) >= 1

        await eventually(counted, what="bad deployment counted")
        assert (await s.client.dead_tasks()).total == 0  # still serving
    assert any("broken" in e.subject or "broken" in e.reason for e in errors.events)


@pytest.mark.timeout(60)
async def test_agent_reports_bad_cancel_and_ready_notices_and_keeps_serving(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    agent = echo_agent()
    async with scheduler(bus) as s, running(agent, bus):
        await eventually(lambda: bool(agent.capabilities), what="agent up")
        await s.client.wait((await s.client.submit("work", 0)).task_id, timeout_s=20)
        await bus.nc.publish(bus.names.cancel_subject(), b"cancel everything!")
        await bus.nc.publish(bus.names.ready_subject("work"), b'{"type": "nope"}')

        def bad(source: str) -> float:
            labels = {"service": "agent", "source": source}
            return agent.registry.get_sample_value(BAD, labels) or 0.0

        await eventually(
            lambda: bad("control") == 1 and bad("ready") == 1, what="bad notices counted"
        )
        done = await s.client.wait((await s.client.submit("work", 7)).task_id, timeout_s=20)
        await eventually(lambda: len(errors.events) >= 2, what="error events")
    assert done.status == "succeeded" and msgspec.json.decode(done.output) == 7
    subjects = {e.subject for e in errors.events}
    assert {bus.names.cancel_subject(), bus.names.ready_subject("work")} <= subjects
