"""Priority bands: subjects and consumers, start order, max_concurrency, ready notices.

The real scheduler (in-process) admits the tasks; agents are the real runtime on
connections of their own, against the session nats-server.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import RetryableTaskError
from agentbus.messages import Backoff, Task, encode
from agentbus.names import BANDS, Names
from agentbus.runtime import Agent, TaskContext
from agentbus.runtime.intake import Intake
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, quick_settings, worker
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


def test_band_names_keep_band_zero_as_before() -> None:
    names = Names("agentbus")
    assert names.task_subject("summarize") == "agentbus.tasks.summarize"
    assert Names.task_consumer("summarize") == "cap-summarize"
    assert names.task_subject("summarize", 0) == "agentbus.tasks.summarize"
    assert names.task_subject("summarize", 7) == "agentbus.tasks.summarize.p7"
    assert Names.task_consumer("summarize", 7) == "cap-summarize-p7"
    assert BANDS == 10


async def test_task_goes_to_its_band_subject(bus: Bus) -> None:
    async with running_scheduler(bus):
        client = Client(bus)
        await client.submit("work", 1, priority=0)
        await client.submit("work", 2, priority=4)
        await client.submit("work", 3, priority=4)
        info = await bus.js.stream_info(bus.names.tasks_stream, subjects_filter=">")
        assert info.state.subjects == {
            bus.names.task_subject("work"): 1,
            bus.names.task_subject("work", 4): 2,
        }


async def test_higher_priority_starts_before_queued_lower_priority(
    bus: Bus, bus_settings: BusSettings
) -> None:
    w = worker("prio-1")
    agent = w.agent
    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        blocker = await client.submit("work", "blocker")
        runs = [blocker.task_id]
        await eventually(lambda: asyncio.sleep(0, w.started == runs), what="blocker runs")
        low = [await client.submit("work", f"low-{i}", priority=1) for i in range(3)]
        mid = await client.submit("work", "mid", priority=4)
        high = await client.submit("work", "high", priority=8)

        def flagged() -> list[int]:
            assert agent._intake is not None
            return agent._intake.flagged("work")

        # the ready notices of all three bands have reached the (busy) agent
        await eventually(lambda: asyncio.sleep(0, {1, 4, 8} <= set(flagged())), what="notices")
        w.gate.set()
        ids = [blocker.task_id, *(r.task_id for r in low), mid.task_id, high.task_id]
        records = await client.wait_all(ids, timeout_s=30)
    assert all(r.status == "succeeded" for r in records)
    assert w.started == [blocker.task_id, high.task_id, mid.task_id, *(r.task_id for r in low)]


async def test_max_concurrency_is_never_exceeded_across_bands(
    bus: Bus, bus_settings: BusSettings
) -> None:
    running = 0
    most = 0
    agent = Agent("worker", max_concurrency=3, settings=quick_settings("prio-2"))

    @agent.handler("work")
    async def work(ctx: TaskContext, n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.02)
        finally:
            running -= 1
        return n

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        rng = random.Random(7)
        tasks = [
            await client.build_task("work", n, priority=rng.randrange(BANDS)) for n in range(60)
        ]
        replies = await client.submit_many(tasks)
        records = await client.wait_all([r.task.task_id for r in replies], timeout_s=60)
        # nothing was delivered beyond the agent's slots: no band holds unacked messages
        pending = 0
        for band in range(BANDS):
            consumer = Names.task_consumer("work", band)
            info = await bus.js.consumer_info(bus.names.tasks_stream, consumer)
            pending += info.num_ack_pending + info.num_redelivered
    assert [r.status for r in records] == ["succeeded"] * 60
    assert most == 3, f"at most {most} handlers ran at once"
    assert pending == 0


async def test_idle_agent_is_woken_by_the_ready_notice(bus: Bus, bus_settings: BusSettings) -> None:
    # rescan every 60 s: only the scheduler's notice can get the task started in time
    agent = worker("prio-3", rescan_s=60.0).agent
    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        await asyncio.sleep(0.5)  # the agent's first scan is over: it sleeps now
        for priority in (0, 6):
            record = await client.submit("work", {"p": priority}, priority=priority)
            done = await client.wait(record.task_id, timeout_s=20)
            assert done.status == "succeeded"


async def test_rescan_finds_tasks_published_without_a_notice(
    bus: Bus, bus_settings: BusSettings
) -> None:
    # e.g. a task redelivered after a nak delay: nobody announces it
    w = worker("prio-4", rescan_s=0.3)
    async with agent_running(w.agent, bus_settings):
        await asyncio.sleep(0.5)
        task = Task(task_id="silent", capability="work", priority=5)
        await bus.js.publish(bus.names.task_subject("work", 5), encode(task))
        await eventually(lambda: asyncio.sleep(0, w.started == ["silent"]), what="task handled")


async def test_a_retry_is_pulled_when_its_delay_is_up(bus: Bus, bus_settings: BusSettings) -> None:
    # rescan every 60 s: the agent that nak'd the task looks again when the delay ends
    agent = Agent("worker", settings=quick_settings("prio-5", rescan_s=60.0))

    @agent.handler("work")
    async def work(ctx: TaskContext, value: Any) -> int:
        if ctx.attempt == 1:
            raise RetryableTaskError("try again")
        return ctx.attempt

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        await asyncio.sleep(0.5)
        fast = Backoff(initial_s=0.2, max_s=0.2, jitter=0.0)
        record = await client.submit("work", None, priority=2, backoff=fast)
        done = await client.wait(record.task_id, timeout_s=20)
    assert done.status == "succeeded" and len(done.attempts) == 2


async def test_answers_to_given_up_pulls_are_run_not_lost(bus: Bus) -> None:
    # A pull whose answer comes after the intake stopped waiting for it (here: a
    # timeout far below a round trip) must not cost its tasks an attempt: the late
    # messages run in free slots (the slot count is still respected).
    names = bus.names
    for band in range(BANDS):
        durable = Names.task_consumer("late", band)
        await bus.js.add_consumer(
            names.tasks_stream,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=names.task_subject("late", band),
                max_ack_pending=-1,
            ),
        )
    for n in range(6):
        task = Task(task_id=f"late-{n}", capability="late")
        await bus.js.publish(names.task_subject("late"), encode(task))
    handled: list[str] = []
    in_hand = 0
    most = 0
    intake: Intake

    async def finish(msg: Msg) -> None:
        nonlocal in_hand
        await asyncio.sleep(0.05)
        await msg.ack()
        in_hand -= 1
        intake.release()

    def dispatch(capability: str, msg: Msg) -> None:
        nonlocal in_hand, most
        in_hand += 1
        most = max(most, in_hand)
        handled.append(msg.subject)
        asyncio.get_running_loop().create_task(finish(msg))

    intake = Intake(
        bus, ["late"], max_concurrency=2, rescan_s=0.2, pull_timeout_s=1e-6, dispatch=dispatch
    )
    await intake.start()
    runner = asyncio.create_task(intake.run())
    try:
        await eventually(lambda: asyncio.sleep(0, len(handled) >= 6), what="all 6 handled")
    finally:
        intake.stop()
        await runner
        await intake.close()
    info = await bus.js.consumer_info(names.tasks_stream, Names.task_consumer("late"))
    assert len(handled) == 6
    assert most <= 2
    assert info.num_redelivered == 0
