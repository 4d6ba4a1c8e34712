"""An idle agent's rescans back off; tasks still reach it by push, at once.

Rescans (``agentbus.runtime.rescan``) are the safety net for messages no notice
announced. While every task subject is empty they become rare; a task submitted then
is started through its ready notice, without waiting for the next rescan, and a
message held in the stream (here: a task under another agent's lease) keeps the
rescans frequent.
"""

from __future__ import annotations

import contextlib

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.runtime.intake import Intake
from agentbus.runtime.rescan import RescanClock
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, worker
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


def test_rescan_clock_doubles_while_empty_and_snaps_back_on_work() -> None:
    clock = RescanClock(1.0, 30.0, now=0.0)
    assert (clock.interval_s, clock.due) == (1.0, 1.0)
    for expected in (2.0, 4.0, 8.0, 16.0, 30.0, 30.0):
        clock.scanned(clock.due, empty=True)
        assert clock.interval_s == expected
    at = clock.due - 20.0
    clock.stir(at)  # a notice or a task: the next rescan within min_s
    assert (clock.interval_s, clock.due) == (1.0, at + 1.0)
    clock.scanned(at + 1.0, empty=True)  # work came since the last rescan: stays short
    assert clock.interval_s == 1.0
    clock.scanned(at + 2.0, empty=False)  # a message found
    assert clock.interval_s == 1.0
    clock.scanned(at + 3.0, empty=True)
    assert clock.interval_s == 2.0
    assert RescanClock(5.0, 1.0, now=0.0).max_s == 5.0  # never below min_s


def _intake(w: object) -> Intake:
    intake = w.agent._intake  # type: ignore[attr-defined]
    assert intake is not None
    return intake  # type: ignore[no-any-return]


async def test_backed_off_agent_starts_a_task_by_its_notice(
    bus: Bus, bus_settings: BusSettings
) -> None:
    w = worker("idle-1", rescan_s=0.5, rescan_max_s=60.0, lease_s=120.0)
    async with running_scheduler(bus), agent_running(w.agent, bus_settings):
        await eventually(lambda: w.agent._intake is not None, what="intake started")
        intake = _intake(w)
        await eventually(
            lambda: intake.rescan.interval_s >= 8.0, timeout_s=30.0, what="rescans backed off"
        )
        probes = intake.probes
        record = await Client(bus).submit("work", "hello")
        done = await Client(bus).wait(record.task_id, timeout_s=5.0)
        assert done.status == "succeeded"
        assert intake.probes == probes  # served by its notice: no rescan ran meanwhile


async def test_a_task_under_lease_keeps_idle_agents_rescanning(
    bus: Bus, bus_settings: BusSettings
) -> None:
    busy = worker("idle-busy", lease_s=120.0)
    idle = worker("idle-2", rescan_s=0.1, rescan_max_s=60.0, lease_s=120.0)
    client = Client(bus)
    async with running_scheduler(bus), agent_running(busy.agent, bus_settings):
        blocker = await client.submit("work", "blocker")
        await eventually(lambda: blocker.task_id in busy.started, what="blocker started")
        async with agent_running(idle.agent, bus_settings):
            await eventually(lambda: idle.agent._intake is not None, what="intake started")
            intake = _intake(idle)
            await eventually(lambda: intake.probes >= 8, what="rescans ran")
            assert intake.rescan.interval_s == 0.1  # the held message: no back-off
            busy.gate.set()
            assert (await client.wait(blocker.task_id, timeout_s=10.0)).status == "succeeded"
            await eventually(
                lambda: intake.rescan.interval_s >= 0.8, what="rescans back off once empty"
            )


async def test_a_task_a_stopping_agent_returns_is_announced(
    bus: Bus, bus_settings: BusSettings
) -> None:
    # The idle agent's first rescan is 30 s away: only a notice can bring it the task
    # the stopping agent nak'd, and nothing else announces that.
    busy = worker("ret-busy", lease_s=120.0, stop_grace_s=0.2)
    idle = worker("ret-idle", rescan_s=30.0, rescan_max_s=60.0, lease_s=120.0)
    client = Client(bus)
    async with running_scheduler(bus), contextlib.AsyncExitStack() as both:
        busy_running = contextlib.AsyncExitStack()
        both.push_async_callback(busy_running.aclose)
        await busy_running.enter_async_context(agent_running(busy.agent, bus_settings))
        blocker = await client.submit("work", "blocker")
        await eventually(lambda: blocker.task_id in busy.started, what="busy started it")
        await both.enter_async_context(agent_running(idle.agent, bus_settings))
        await eventually(lambda: idle.agent._intake is not None, what="idle's intake started")
        intake = _intake(idle)
        await eventually(lambda: intake.listening and not intake.flagged("work"), what="idle")
        await busy_running.aclose()  # SIGTERM-like: the blocker is nak'd for another agent
        await eventually(lambda: blocker.task_id in idle.started, timeout_s=10.0, what="handed on")
        assert intake.probes == 0  # by the notice, not a rescan
        idle.gate.set()
        assert (await client.wait(blocker.task_id, timeout_s=10.0)).status == "succeeded"
