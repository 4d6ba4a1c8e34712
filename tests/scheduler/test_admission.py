from __future__ import annotations

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.errors import ContractError, NotFoundError
from agentbus.messages import (
    NULL,
    BlobRef,
    GetTask,
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
    TaskEvent,
    TaskReply,
    decode_record,
    decode_task,
    encode,
    utcnow,
)
from agentbus.messages import TaskRecord as Record
from tests._harness.services import Scheduler


def _ep(bus: Bus, verb: str) -> str:
    return bus.names.endpoint("scheduler", verb)


async def _task_count(bus: Bus) -> int:
    info = await bus.js.stream_info(bus.names.tasks_stream)
    return info.state.messages


async def test_submit_records_and_enqueues(bus: Bus, scheduler: Scheduler) -> None:
    record = await scheduler.client.submit("echo", {"x": 1}, task_id="t-1", priority=3)
    assert record.status == "queued"
    assert record.task_id == "t-1"
    assert record.priority == 3

    kv = await bus.kv(bus.names.tasks_bucket)
    entry = await kv.get("t-1")
    assert entry.value is not None
    stored = decode_record(entry.value)
    assert stored.status == "queued"
    assert msgspec.json.decode(stored.input) == {"x": 1}

    # priority 3: the task is on band 3's subject
    msg = await bus.js.get_last_msg(bus.names.tasks_stream, bus.names.task_subject("echo", 3))
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == "t-1"
    assert msg.data is not None
    task = decode_task(msg.data)
    assert task.task_id == "t-1"
    assert task.priority == 3
    assert msgspec.json.decode(task.input) == {"x": 1}

    ev = await bus.js.get_last_msg(
        bus.names.events_stream, bus.names.task_event_subject("queued", "t-1")
    )
    assert ev.data is not None
    event = msgspec.json.decode(ev.data, type=TaskEvent)
    assert (event.task_id, event.status) == ("t-1", "queued")
    assert scheduler.metric("agentbus_scheduler_tasks_submitted_total", {"outcome": "created"}) == 1


async def test_submit_generates_task_id(bus: Bus, scheduler: Scheduler) -> None:
    reply = await bus.request(_ep(bus, "submit"), SubmitTask(capability="echo"), SubmitReply)
    assert reply.created
    assert len(reply.task.task_id) == 32
    assert (await scheduler.client.get(reply.task.task_id)).status == "queued"


async def test_repeated_submit_is_idempotent(bus: Bus, scheduler: Scheduler) -> None:
    first = await bus.request(
        _ep(bus, "submit"),
        SubmitTask(capability="echo", task_id="same", input=msgspec.Raw(b"1")),
        SubmitReply,
    )
    second = await bus.request(
        _ep(bus, "submit"),
        SubmitTask(capability="echo", task_id="same", input=msgspec.Raw(b"2")),
        SubmitReply,
    )
    assert first.created
    assert not second.created
    assert second.task == first.task  # the stored record, not the new request
    assert await _task_count(bus) == 1
    assert (
        scheduler.metric("agentbus_scheduler_tasks_submitted_total", {"outcome": "existing"}) == 1
    )


async def test_resubmit_heals_a_record_without_a_task_message(
    bus: Bus, scheduler: Scheduler
) -> None:
    # A crash between the KV write and the publish leaves a queued record alone.
    now = utcnow()
    orphan = Record(
        task_id="healed", capability="echo", status="queued", created_at=now, updated_at=now
    )
    kv = await bus.kv(bus.names.tasks_bucket)
    await kv.create("healed", encode(orphan))
    assert await _task_count(bus) == 0

    reply = await bus.request(
        _ep(bus, "submit"), SubmitTask(capability="echo", task_id="healed"), SubmitReply
    )
    assert not reply.created
    assert await _task_count(bus) == 1
    msg = await bus.js.get_last_msg(bus.names.tasks_stream, bus.names.task_subject("echo"))
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == "healed"


@pytest.mark.timeout(60)
async def test_batch_submit_500(bus: Bus, scheduler: Scheduler) -> None:
    tasks = [
        await scheduler.client.build_task("echo", {"i": i}, task_id=f"b{i}") for i in range(500)
    ]
    replies = await scheduler.client.submit_many(tasks)
    assert [r.task.task_id for r in replies] == [f"b{i}" for i in range(500)]
    assert all(r.created for r in replies)
    assert await _task_count(bus) == 500

    again = await scheduler.client.submit_many(tasks)
    assert not any(r.created for r in again)
    assert await _task_count(bus) == 500
    assert (await scheduler.client.get("b499")).status == "queued"


async def test_invalid_tasks_are_rejected(bus: Bus, scheduler: Scheduler) -> None:
    ref = BlobRef(bucket="b", name="n", size_bytes=1, sha256="0" * 64)
    both = SubmitTask(capability="echo", input=msgspec.Raw(b"1"), input_ref=ref, task_id="bad")
    with pytest.raises(ContractError, match="input_ref"):
        await bus.request(_ep(bus, "submit"), both, SubmitReply)

    batch = SubmitTasks(tasks=[SubmitTask(capability="echo", task_id="ok", input=NULL), both])
    with pytest.raises(ContractError, match="#1"):
        await bus.request(_ep(bus, "submit_batch"), batch, SubmitTasksReply)
    assert await _task_count(bus) == 0  # nothing of a rejected batch is admitted

    # A capability that is not a token never decodes (400 at the endpoint).
    with pytest.raises(ContractError):
        await bus.request(_ep(bus, "submit"), SubmitTask(capability="Bad.Cap"), SubmitReply)


async def test_get(bus: Bus, scheduler: Scheduler) -> None:
    await scheduler.client.submit("echo", "hi", task_id="known")
    reply = await bus.request(_ep(bus, "get"), GetTask(task_id="known"), TaskReply)
    assert reply.task.task_id == "known"
    assert msgspec.json.decode(reply.task.input) == "hi"

    with pytest.raises(NotFoundError):
        await bus.request(_ep(bus, "get"), GetTask(task_id="missing"), TaskReply)
    with pytest.raises(NotFoundError):
        await scheduler.client.get("missing")
