"""A queued record whose message never reached the work stream heals by itself.

The crash window of admission is reproduced exactly: the record is written to KV as
admission writes it, and the publish that would follow never happens.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import SubmitTask, TaskRecord, encode, utcnow
from agentbus.runtime import TaskContext
from agentbus_scheduler.tasks.admission import new_record, task_message
from tests._harness.polling import eventually
from tests._harness.work_stream import make_agent, running, scheduler, stream_messages

pytestmark = pytest.mark.nats
HEALED = "agentbus_scheduler_tasks_healed_total"


async def _record_only(bus: Bus, task_id: str, *, age_s: float = 0.0) -> TaskRecord:
    """Write the ``queued`` record of a task as admission does, and stop there."""
    record = new_record(SubmitTask(capability="work", input=msgspec.Raw(b"21")), task_id)
    if age_s:
        created = utcnow() - timedelta(seconds=age_s)
        record = msgspec.structs.replace(record, created_at=created, updated_at=created)
    kv = await bus.kv(bus.names.tasks_bucket)
    await kv.create(task_id, encode(record))
    return record


async def _publish(bus: Bus, record: TaskRecord) -> None:
    await bus.js.publish(
        bus.names.task_subject("work"),
        encode(task_message(record)),
        headers={"Nats-Msg-Id": record.task_id},
    )


@pytest.mark.parametrize("age_s", [0.0, 600.0], ids=["in-window", "past-window"])
async def test_a_record_without_its_message_is_published_again_and_runs(
    bus: Bus, age_s: float
) -> None:
    await _record_only(bus, "lost-publish", age_s=age_s)
    agent = make_agent()

    @agent.handler("work")
    async def double(ctx: TaskContext, value: int) -> int:
        return value * 2

    async with scheduler(bus, heal_grace_s=1.0) as sched, running(agent, bus):
        done = await sched.client.wait("lost-publish", timeout_s=20)
        assert done.status == "succeeded" and msgspec.json.decode(done.output) == 42
        assert sched.metric(HEALED) == 1


@pytest.mark.parametrize("age_s", [0.0, 600.0], ids=["in-window", "past-window"])
async def test_a_queued_task_with_its_message_is_never_duplicated(bus: Bus, age_s: float) -> None:
    record = await _record_only(bus, "has-message", age_s=age_s)
    await _publish(bus, record)
    async with scheduler(bus, heal_grace_s=0.5) as sched:

        def passes() -> bool:
            return sched.metric("agentbus_scheduler_sweeps_total") >= 3

        await eventually(passes, what="three sweeps")
        assert await stream_messages(bus) == 1
        assert sched.metric(HEALED) == 0
