"""The agent runtime against a real nats-server (no scheduler: the test plays it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.js.api import ConsumerInfo
from nats.js.errors import KeyNotFoundError, NotFoundError

from agentbus.bus import Bus
from agentbus.messages import ErrorEvent, Task, TaskResult, TaskStarted, decode_report, encode
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


class Doubled(msgspec.Struct, frozen=True):
    n: int


def make_agent(**settings: Any) -> Agent:
    agent = Agent("calc", settings=AgentSettings(agent_id="calc-1", **settings))

    @agent.handler("double")
    async def double(ctx: TaskContext, value: Doubled) -> int:
        if value.n < 0:
            raise ValueError(f"negative input {value.n}")
        if value.n == 999:
            await asyncio.sleep(3.0)
        if value.n == 998:
            await asyncio.sleep(600.0)
        return value.n * 2

    return agent


@pytest.fixture
async def running_agent(bus: Bus) -> AsyncIterator[Agent]:
    agent = make_agent(lease_s=1.5, fetch_timeout_s=0.5, heartbeat_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(bus, stop))
    yield agent
    stop.set()
    await asyncio.wait_for(task, 15)


async def publish_task(bus: Bus, task_id: str, value: Any) -> None:
    task = Task(task_id=task_id, capability="double", input=msgspec.Raw(encode(value)))
    await bus.js.publish(bus.names.task_subject("double"), encode(task))


async def collect_reports(bus: Bus, count: int, timeout_s: float = 10.0) -> list[Any]:
    sub = await bus.js.pull_subscribe(bus.names.results_all(), durable="test-results")
    reports: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(reports) < count:
                try:
                    msgs = await sub.fetch(count - len(reports), timeout=1)
                except TimeoutError:
                    continue
                for m in msgs:
                    reports.append(decode_report(m.data))
                    await m.ack()
    finally:
        await sub.unsubscribe()
    return reports


async def test_handler_result_is_reported_then_task_acked(bus: Bus, running_agent: Agent) -> None:
    await publish_task(bus, "t-ok", {"n": 21})
    (result,) = await collect_reports(bus, 1)
    assert isinstance(result, TaskResult)
    assert result.status == "succeeded" and msgspec.json.decode(result.output) == 42
    assert result.agent_id == "calc-1" and result.attempt == 1 and result.ran
    # acked: the work-queue stream is empty once the result is out
    await asyncio.sleep(0.2)
    info = await bus.js.stream_info(bus.names.tasks_stream)
    assert info.state.messages == 0
    # a handler shorter than started_report_delay_s sends no TaskStarted
    results = await bus.js.stream_info(bus.names.results_stream)
    assert results.state.messages == 0


async def test_started_is_reported_at_once_with_no_delay(bus: Bus) -> None:
    agent = make_agent(fetch_timeout_s=0.5, started_report_delay_s=0)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(bus, stop))
    try:
        await publish_task(bus, "t-told", {"n": 2})
        started, result = await collect_reports(bus, 2)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    assert isinstance(started, TaskStarted) and started.task_id == "t-told"
    assert isinstance(result, TaskResult) and result.status == "succeeded"


async def test_handler_exception_becomes_failed_result(bus: Bus, running_agent: Agent) -> None:
    await publish_task(bus, "t-bad", {"n": -1})
    (result,) = await collect_reports(bus, 1)
    assert result.status == "failed"
    assert result.error.error_type == "ValueError"
    assert result.error.message == "negative input -1"
    assert result.ran  # the scheduler records the attempt from the result alone


async def test_input_of_wrong_shape_fails_with_contract_error(
    bus: Bus, running_agent: Agent
) -> None:
    await publish_task(bus, "t-shape", {"n": "not a number"})
    (result,) = await collect_reports(bus, 1)
    assert result.status == "failed" and result.error.error_type == "ContractError"


async def test_poison_task_is_terminated_and_reported(bus: Bus, running_agent: Agent) -> None:
    events = await bus.js.subscribe(bus.names.events_all("error"), ordered_consumer=True)
    await bus.js.publish(bus.names.task_subject("double"), b"{not json")
    msg = await events.next_msg(timeout=10)
    event = msgspec.json.decode(msg.data, type=ErrorEvent)
    assert event.subject == bus.names.task_subject("double")
    # published on a subject carrying the agent's own id
    assert msg.subject == bus.names.agent_error_subject(running_agent.agent_id)
    # the consumer keeps working after the poison message
    await publish_task(bus, "t-after", {"n": 1})
    (result,) = await collect_reports(bus, 1)
    assert result.task_id == "t-after" and result.status == "succeeded"


async def test_lease_is_renewed_for_long_handlers(bus: Bus, running_agent: Agent) -> None:
    # lease 1.5 s, handler 3 s: without renewal the task would be redelivered (attempt 2)
    await publish_task(bus, "t-long", {"n": 999})
    reports = await collect_reports(bus, 2, timeout_s=15)
    assert [type(r).__name__ for r in reports] == ["TaskStarted", "TaskResult"]
    await asyncio.sleep(1.0)
    consumer = await bus.js.consumer_info(bus.names.tasks_stream, "cap-double")
    assert consumer.num_redelivered == 0


async def test_agent_registers_and_leaves(bus: Bus) -> None:
    agent = make_agent(heartbeat_s=0.2, fetch_timeout_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(bus, stop))
    kv = await bus.kv(bus.names.agents_bucket)
    async with asyncio.timeout(5):
        while True:
            try:
                entry = await kv.get("calc-1")
                break
            except Exception:
                await asyncio.sleep(0.1)
    assert entry.value is not None and b'"capabilities":["double"]' in entry.value
    stop.set()
    await asyncio.wait_for(task, 10)
    with pytest.raises(KeyNotFoundError):
        await kv.get("calc-1")


async def test_stop_returns_a_task_that_outlives_the_grace_period(bus: Bus) -> None:
    agent = make_agent(fetch_timeout_s=0.5, stop_grace_s=0.5)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(bus, stop))
    await publish_task(bus, "t-endless", {"n": 998})
    consumer = bus.names.tasks_stream, "cap-double"

    async def started() -> bool:
        try:
            info: ConsumerInfo = await bus.js.consumer_info(*consumer)
            return info.num_ack_pending == 1
        except NotFoundError:  # the agent has not created its consumer yet
            return False

    await eventually(started, what="task delivered")
    stop.set()
    await asyncio.wait_for(run, 10)  # the 600 s handler does not hold the stop

    # Returned with a nak: the next pull gets it at once (delivery 2), long before
    # its 30 s lease would have lapsed.
    sub = await bus.js.pull_subscribe_bind("cap-double", stream=bus.names.tasks_stream)
    try:
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == 2
        await msg.ack()
    finally:
        await sub.unsubscribe()
