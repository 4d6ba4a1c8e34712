"""No ready notice is lost while agents keep toggling between busy and idle.

Agents here never rescan (``rescan_s`` = 60 s, longer than the test), so a task whose
notice was lost — written off by an agent, or heard by nobody and never backlogged —
stays in the stream and the test fails naming how many were never pulled. Bands above
0 are used on purpose: an agent that rejoins the queue group also pulls band 0 (a
backstop that would hide a lost band-0 notice), never the higher bands.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest
from nats.aio.msg import Msg

import agentbus.runtime.intake
from agentbus.bus import Bus
from agentbus.bus.notices import Announcer
from agentbus.messages import Task, encode
from agentbus.runtime.intake import Intake
from agentbus.settings import BusSettings
from tests._harness.polling import eventually
from tests._harness.work_stream import bind_all_bands

pytestmark = pytest.mark.nats

NEVER_S = 60.0
CAPABILITY = "toggle"
AGENTS = 3
SLOTS = 2
ROUNDS = 40


@pytest.mark.timeout(180)
async def test_no_notice_is_lost_while_agents_toggle_busy_and_idle(
    bus: Bus, bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The notice accounting is under test, not the server's speed: on a loaded machine
    # storing a task can take longer than the production 20 ms a notice's pull waits.
    monkeypatch.setattr(agentbus.runtime.intake, "NOTICE_WAIT_S", 0.5)
    await bind_all_bands(bus, CAPABILITY)
    rng = random.Random(20261121)
    pulled: Counter[str] = Counter()
    most_busy = 0
    work: set[asyncio.Task[None]] = set()
    intakes: list[Intake] = []

    async def handle(intake: Intake, msg: Msg) -> None:
        try:
            await asyncio.sleep(rng.uniform(0.0, 0.012))  # a short task: slots free and fill
            await msg.ack()
        finally:
            intake.release()

    def dispatcher(n: int) -> Callable[[str, Msg], None]:
        def dispatch(capability: str, msg: Msg) -> None:
            nonlocal most_busy
            intake = intakes[n]
            most_busy = max(most_busy, intake.busy)
            pulled[msg.headers["Nats-Msg-Id"] if msg.headers else "?"] += 1
            task = asyncio.create_task(handle(intake, msg))
            work.add(task)
            task.add_done_callback(work.discard)

        return dispatch

    published = 0
    async with AsyncExitStack() as stack:
        for n in range(AGENTS):
            agent_bus = await Bus.connect(bus_settings, name=f"test-toggle-{n}")
            stack.push_async_callback(agent_bus.close)
            intake = Intake(
                agent_bus,
                [CAPABILITY],
                max_concurrency=SLOTS,
                rescan_s=NEVER_S,
                pull_timeout_s=5.0,
                dispatch=dispatcher(n),
            )
            intakes.append(intake)
            await intake.start()
            runner = asyncio.create_task(intake.run())

            async def shut(intake: Intake = intake, runner: asyncio.Task[None] = runner) -> None:
                intake.stop()
                await runner
                await asyncio.gather(*work, return_exceptions=True)
                await intake.close()

            stack.push_async_callback(shut)

        def first_scan_over() -> bool:
            return all(i.listening and not i.flagged(CAPABILITY) for i in intakes)

        await eventually(first_scan_over, what="intakes idle")
        # the scheduler's two ways to announce: a lone task right behind its publish, a
        # burst in one notice once the stream stored all of it
        announcer = Announcer(bus)
        try:
            for round_ in range(ROUNDS):
                band = rng.choice((1, 4, 8))
                # a burst that overfills the agents (backlog notices), then lone tasks
                # announced as the scheduler does: right behind the publish
                for burst in (rng.randint(AGENTS * SLOTS, 3 * AGENTS * SLOTS), 1, 1, 1):
                    acks = []
                    for _ in range(burst):
                        published += 1
                        task = Task(task_id=f"t{published}", capability=CAPABILITY, priority=band)
                        acks.append(
                            await bus.js.publish_async(
                                bus.names.task_subject(CAPABILITY, band),
                                encode(task),
                                headers={"Nats-Msg-Id": task.task_id},
                            )
                        )
                    if burst == 1:  # right behind the publish, before the stream's ack
                        await announcer.announce(CAPABILITY, band, 1)
                    await asyncio.gather(*acks)
                    if burst > 1:
                        await announcer.announce(CAPABILITY, band, burst)
                    await asyncio.sleep(rng.uniform(0.0, 0.003))

                def round_pulled(upto: int = published) -> bool:
                    return len(pulled) >= upto

                try:
                    await eventually(round_pulled, timeout_s=10.0, what=f"round {round_}")
                except AssertionError:
                    raise AssertionError(
                        f"round {round_} (band {band}): {published - len(pulled)} of "
                        f"{published} tasks never pulled; agents (busy, listening, "
                        f"flagged, passed on): {[_state(i) for i in intakes]}, backlogged "
                        f"{announcer.backlogged}"
                    ) from None

            def all_pulled() -> bool:
                return len(pulled) == published

            try:
                await eventually(all_pulled, timeout_s=30.0, what="every task pulled")
            except AssertionError:
                missing = published - len(pulled)
                raise AssertionError(
                    f"{missing} of {published} tasks never pulled: their notices were lost "
                    f"(passed on: {[i.passed_on for i in intakes]}, "
                    f"backlogged: {announcer.backlogged})"
                ) from None
        finally:
            await announcer.close()
    assert all(n == 1 for n in pulled.values()), "a task was delivered twice"
    assert most_busy <= SLOTS
    assert sum(i.passed_on for i in intakes) + announcer.backlogged > 0, "agents never got full"


def _state(intake: Intake) -> tuple[int, bool, list[int], int]:
    return intake.busy, intake.listening, intake.flagged(CAPABILITY), intake.passed_on
