"""Ready notices wake one agent with a free slot, never the whole fleet.

Intakes and agents run on connections of their own against the session nats-server;
every agent rescans only every 60 s, so anything that starts did so because of a
notice (or a slot freeing), not the backstop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import msgspec
import pytest
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.bus.notices import Announcer
from agentbus.client import Client
from agentbus.messages import Task, TasksReady, encode
from agentbus.names import BANDS
from agentbus.runtime import Agent, TaskContext
from agentbus.runtime.intake import Intake
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, quick_settings
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.work_stream import bind_all_bands

pytestmark = pytest.mark.nats

NEVER_S = 60.0  # rescan interval: longer than any of these tests


@asynccontextmanager
async def _intakes(bus_settings: BusSettings, count: int) -> AsyncIterator[list[Intake]]:
    """``count`` idle intakes of capability ``herd`` (1 slot each), each on its own connection."""
    intakes: list[Intake] = []
    async with AsyncExitStack() as stack:
        for n in range(count):
            bus = await Bus.connect(bus_settings, name=f"test-herd-{n}")
            stack.push_async_callback(bus.close)
            intake = Intake(
                bus,
                ["herd"],
                max_concurrency=1,
                rescan_s=NEVER_S,
                pull_timeout_s=2.0,
                dispatch=lambda cap, msg: None,
            )
            await intake.start()
            runner = asyncio.create_task(intake.run())

            async def shut(intake: Intake = intake, runner: asyncio.Task[None] = runner) -> None:
                intake.stop()
                await runner
                await intake.close()

            stack.push_async_callback(shut)
            intakes.append(intake)
        yield intakes


async def test_a_notice_wakes_one_idle_agent_not_all(bus: Bus, bus_settings: BusSettings) -> None:
    await bind_all_bands(bus, "herd")
    async with _intakes(bus_settings, 6) as intakes:

        def settled() -> bool:  # the first scan is over, every intake listens
            return all(i.listening and i.pulls >= BANDS and not i.flagged("herd") for i in intakes)

        await eventually(settled, what="intakes idle")
        before = [i.pulls for i in intakes]
        notice = encode(TasksReady(capability="herd", band=0))
        for sent in range(1, 4):
            await bus.nc.publish(bus.names.ready_subject("herd"), notice)

            async def pulled(sent: int = sent) -> bool:
                return sum(i.pulls for i in intakes) - sum(before) >= sent

            await eventually(pulled, what=f"notice {sent} answered")
        for intake in intakes:  # every notice has reached every client by now
            await intake._announcer._nc.flush()
        await asyncio.sleep(0.3)  # a herd would be pulling now
        woken = [i.pulls - b for i, b in zip(intakes, before, strict=True)]
    assert sum(woken) == 3, f"pulls per agent after 3 notices: {woken}"


async def test_a_notice_nobody_hears_goes_to_the_backlog(
    bus: Bus, bus_settings: BusSettings
) -> None:
    # no agent listens (all full): the 503 makes the announcer tell every agent
    heard: list[TasksReady] = []

    async def on_backlog(msg: Msg) -> None:
        heard.append(msgspec.json.decode(msg.data, type=TasksReady))

    sub = await bus.nc.subscribe(bus.names.backlog_subject("work"), cb=on_backlog)
    announcer = Announcer(bus)
    try:
        for _ in range(3):  # within one backlog interval: one notice now, one for the rest
            await announcer.announce("work", 6, 2)
        await eventually(
            lambda: asyncio.sleep(0, sum(n.count for n in heard) == 6), what="backlog notices"
        )
    finally:
        await announcer.close()
        await sub.unsubscribe()
    assert announcer.unheard == 3
    assert [(n.band, n.count) for n in heard] == [(6, 2), (6, 4)]


async def test_tasks_queued_while_all_agents_idle_all_start_without_a_rescan(
    bus: Bus, bus_settings: BusSettings
) -> None:
    # 24 tasks, 4 agents of 2 slots: the agents fill, notices are passed on or go to
    # the backlog, freed slots look again; with rescans 60 s apart nothing may stall
    in_hand: Counter[str] = Counter()
    most: Counter[str] = Counter()
    ran: Counter[str] = Counter()
    agents = [
        Agent("worker", max_concurrency=2, settings=quick_settings(f"herd-{n}", rescan_s=NEVER_S))
        for n in range(4)
    ]
    for agent in agents:

        @agent.handler("work")
        async def work(ctx: TaskContext, n: int, agent_id: str = agent.agent_id) -> int:
            in_hand[agent_id] += 1
            most[agent_id] = max(most[agent_id], in_hand[agent_id])
            ran[agent_id] += 1
            try:
                await asyncio.sleep(0.05)
            finally:
                in_hand[agent_id] -= 1
            return n

    async with running_scheduler(bus), AsyncExitStack() as stack:
        for agent in agents:
            await stack.enter_async_context(agent_running(agent, bus_settings))

        async def idle() -> bool:
            return all(a._intake is not None and a._intake.listening for a in agents)

        await eventually(idle, what="agents idle")
        await asyncio.sleep(0.3)  # past the first scan
        client = Client(bus)
        ids: list[str] = []
        for burst in range(2):  # one batch while they are idle, one while they are busy
            tasks = [await client.build_task("work", 12 * burst + n) for n in range(12)]
            ids += [r.task.task_id for r in await client.submit_many(tasks)]
        records = await client.wait_all(ids, timeout_s=40)
    assert [r.status for r in records] == ["succeeded"] * 24
    assert sum(ran.values()) == 24
    assert len(ran) > 1, f"one agent took everything: {ran}"
    assert max(most.values()) <= 2


async def test_an_idle_rescan_pulls_only_bands_that_hold_messages(
    bus: Bus, bus_settings: BusSettings
) -> None:
    await bind_all_bands(bus, "quiet")
    silent = Task(task_id="silent-p7", capability="quiet", priority=7)
    intake = Intake(
        bus,
        ["quiet"],
        max_concurrency=1,
        rescan_s=0.2,
        pull_timeout_s=2.0,
        dispatch=lambda cap, msg: None,
    )
    await intake.start()
    runner = asyncio.create_task(intake.run())
    try:
        await eventually(lambda: asyncio.sleep(0, intake.probes >= 1), what="first rescan")
        probes, pulls = intake.probes, intake.pulls
        await eventually(lambda: asyncio.sleep(0, intake.probes >= probes + 3), what="rescans")
        idle_pulls = intake.pulls - pulls
        probes_seen = intake.probes - probes
        # a task that nobody announced, in band 7: the next rescan pulls it
        await bus.js.publish(bus.names.task_subject("quiet", 7), encode(silent))
        await eventually(lambda: asyncio.sleep(0, intake.busy == 1), what="silent task pulled")
    finally:
        intake.stop()
        await runner
        await intake.close()
    # band 0 once per rescan (give or take the one in progress), not all ten bands
    assert idle_pulls <= probes_seen + 1, f"{idle_pulls} pulls in {probes_seen} rescans"
