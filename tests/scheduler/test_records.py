"""The scheduler's record cache and what admission no longer writes.

Admission keeps a new task's ``stream_seq`` in the record cache instead of writing it
to the record; a cancel on an instance without it must still delete the message.
"""

from __future__ import annotations

from typing import cast

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import SubmitTask, TaskEvent, TaskRecord, encode, utcnow
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.tasks.admission import new_record
from agentbus_scheduler.tasks.records import RecordCache, Records
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


def _record(task_id: str, status: str = "queued") -> TaskRecord:
    request = SubmitTask(capability="idle", task_id=task_id)
    return msgspec.structs.replace(new_record(request, task_id), status=status)


async def _stream_seqs(bus: Bus) -> set[int]:
    state = (await bus.js.stream_info(bus.names.tasks_stream)).state
    seqs = set()
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            await bus.js.get_msg(bus.names.tasks_stream, seq=seq)
        except Exception:
            continue
        seqs.add(seq)
    return seqs


@pytest.mark.timeout(60)
async def test_cancel_on_another_instance_finds_the_message(bus: Bus) -> None:
    client = Client(bus)
    async with running_scheduler(bus):
        kept = await client.submit("idle", 1, task_id="kept")
        victim = await client.submit("idle", 2, task_id="victim", priority=3)
        other = await client.submit("idle", 3, task_id="other", priority=3)
    assert None not in (kept.stream_seq, victim.stream_seq, other.stream_seq)
    stored = await client.get("victim")
    assert stored.stream_seq is None  # not written at admission: only cached
    async with running_scheduler(bus):  # a fresh instance: nothing cached
        reply = await client.cancel("victim")
    assert reply.cancelled == ["victim"]
    assert await _stream_seqs(bus) == {kept.stream_seq, other.stream_seq}


@pytest.mark.timeout(30)
async def test_a_stale_cache_entry_costs_a_retry_not_a_lost_write(bus: Bus) -> None:
    await bus.ensure()
    kv = await bus.kv(bus.names.tasks_bucket)
    metrics = SchedulerMetrics(CollectorRegistry())
    records = Records(bus, metrics)
    first = _record("t-1")
    revision = await kv.create("t-1", encode(first))
    records.cache.put(first, revision)
    # another instance writes meanwhile: the cached revision is stale
    await kv.update("t-1", encode(msgspec.structs.replace(first, agent_id="elsewhere")), revision)

    def start(record: TaskRecord) -> tuple[TaskRecord, TaskEvent]:
        event = TaskEvent(task_id="t-1", capability="idle", status="running", at=utcnow())
        return msgspec.structs.replace(record, status="running"), event

    outcome = await records.update("t-1", start)
    assert outcome.changed and outcome.record is not None
    assert (outcome.record.status, outcome.record.agent_id) == ("running", "elsewhere")
    assert metrics.record_conflicts._value.get() == 1
    entry = await kv.get("t-1")
    assert entry.value is not None and msgspec.json.decode(entry.value)["status"] == "running"
    cached = records.cache.get("t-1")
    assert cached is not None and cached[1] == entry.revision


def test_record_cache_keeps_the_latest_revision_and_is_bounded() -> None:
    cache = RecordCache(size=2)
    a, b, c = _record("a"), _record("b"), _record("c")
    cache.put(a, 5)
    cache.put(msgspec.structs.replace(a, status="running"), 3)  # older: ignored
    found = cache.get("a")
    assert found is not None and found == (a, 5)
    cache.put(b, 6)
    cache.get("a")  # a is now the most recently used
    cache.put(c, 7)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    cache.drop("a")
    assert cache.get("a") is None


def test_reports_fetched_together_fold_into_one_write() -> None:
    from agentbus.messages import TaskResult, TaskStarted
    from agentbus_scheduler.tasks.results import _fold

    record = _record("f-1")
    now = utcnow()
    started = TaskStarted(task_id="f-1", agent_id="a-1", attempt=1, started_at=now)
    result = TaskResult(
        task_id="f-1",
        agent_id="a-1",
        attempt=1,
        status="succeeded",
        started_at=now,
        finished_at=now,
        ran=True,
    )
    again = msgspec.structs.replace(result, agent_id="a-2")  # a duplicate from elsewhere
    # the fold reads only the subjects of the messages (their capability)
    subjects = ["t.results.idle.a-1", "t.results.idle.a-1", "t.results.idle.a-2"]
    msgs = [Msg(cast("NatsClient", None), subject=subject) for subject in subjects]
    fold = _fold((record, 4), list(zip(msgs, [started, result, again], strict=True)), now=now)
    assert fold is not None and fold.changed and fold.revision == 4
    assert fold.record.status == "succeeded" and fold.record.agent_id == "a-1"
    assert [e.status for e in fold.events] == ["running", "succeeded"]
    assert fold.statuses == ["running", "succeeded", None]
    assert _fold(None, [], now=now) is None  # not cached: the general path
