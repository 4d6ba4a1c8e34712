"""Durable agent state in the runtime: ctx.checkpoint, restore on start, interval, failure.

No scheduler: the test publishes tasks and reads the agents' reports, as the scheduler
would; the checkpoint service runs in-process on the session's nats-server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from agentbus.agents.counter import CounterAgentState, CountResult, CountTask, build
from agentbus.bus import Bus
from agentbus.errors import FatalTaskError
from agentbus.messages import Task, TaskResult, decode_report, encode
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings
from agentbus.state import task_thread
from agentbus.state.checkpoints import CheckpointClient
from tests._harness.agents import agent_on
from tests._harness.checkpoint import Service
from tests._harness.polling import eventually

FAST: dict[str, Any] = {"lease_s": 2.0, "fetch_timeout_s": 0.5, "heartbeat_s": 0.5, "rescan_s": 0.3}


def settings(**kw: Any) -> AgentSettings:
    return AgentSettings(**(FAST | kw))


async def publish(bus: Bus, capability: str, task_id: str, value: Any) -> None:
    task = Task(
        task_id=task_id, capability=capability, input=msgspec.Raw(encode(value)), max_attempts=5
    )
    await bus.js.publish(bus.names.task_subject(capability), encode(task))


async def next_result(bus: Bus, durable: str, timeout_s: float = 60.0) -> TaskResult:
    sub = await bus.js.pull_subscribe(bus.names.results_all(), durable=durable)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=1)
                except TimeoutError:
                    continue
                for m in msgs:
                    await m.ack()
                    report = decode_report(m.data)
                    if isinstance(report, TaskResult):
                        return report
    finally:
        await sub.unsubscribe()


async def test_a_stopped_task_resumes_from_its_checkpoint_on_another_agent(
    bus: Bus, svc: Service
) -> None:
    steps = 3000
    progress = CheckpointClient(bus, "count")
    first = build(settings(agent_id="counter-a", stop_grace_s=0.2))
    async with agent_on(first, bus):
        await publish(bus, "count", "job-1", CountTask(steps=steps, every=100, step_sleep_s=0.002))

        async def saved_past_500() -> bool:
            latest = await progress.latest(task_thread("job-1"))
            return latest is not None and int(latest.metadata["step"]) >= 500

        await eventually(saved_past_500, timeout_s=60, what="progress checkpoint past step 500")
    stopped_at = await progress.latest(task_thread("job-1"))
    assert stopped_at is not None
    saved_step = int(stopped_at.metadata["step"])
    assert saved_step < steps  # the first agent did not finish

    async with agent_on(build(settings(agent_id="counter-b")), bus):
        result = await next_result(bus, "test-results")
    assert result.status == "succeeded", result.error
    out = msgspec.json.decode(result.output, type=CountResult)
    assert out.total == steps * (steps - 1) // 2
    assert out.agent_id == "counter-b"
    assert out.resumed_from >= saved_step
    assert out.resumed_from % 100 == 0
    assert out.attempt == 2
    # the work was done once, plus at most one interval redone
    assert steps <= out.executed < steps + 100
    assert await progress.latest(task_thread("job-1")) is None  # dropped once done


async def test_agent_state_is_restored_when_the_agent_starts_again(bus: Bus, svc: Service) -> None:
    counter_x = settings(agent_id="counter-x")
    for expected in (1, 2, 3):
        agent = build(counter_x)
        async with agent_on(agent, bus):
            await asyncio.wait_for(agent.durable.restored.wait(), 30)
            assert agent.state == CounterAgentState(starts=expected)
            assert agent.durable.restore_s is not None and agent.durable.restore_s > 0
    latest = await CheckpointClient(bus, "counter-x").get("agent")
    assert msgspec.json.decode(latest.data) == {"starts": 3}


class Steps(msgspec.Struct, frozen=True):
    n: int
    fail: bool = False


def stepper(**options: Any) -> Agent:
    agent = Agent("stepper", settings=settings(agent_id="stepper-1", **options))

    @agent.handler("steps")
    async def steps(ctx: TaskContext, job: Steps) -> int:
        for i in range(job.n):
            ctx.checkpoint.update({"i": i})
            await asyncio.sleep(0.05)
        if job.fail:
            raise FatalTaskError("failed on purpose")
        return job.n

    return agent


async def test_pending_state_is_saved_every_interval_and_when_the_handler_fails(
    bus: Bus, svc: Service
) -> None:
    progress = CheckpointClient(bus, "steps")
    async with agent_on(stepper(checkpoint_interval_s=0.2), bus):
        await publish(bus, "steps", "job-f", Steps(n=40, fail=True))

        async def saved_on_interval() -> bool:
            latest = await progress.latest(task_thread("job-f"))
            return latest is not None and latest.metadata.get("reason") == "interval"

        await eventually(saved_on_interval, timeout_s=30, what="interval checkpoint")
        result = await next_result(bus, "test-results")
        assert result.status == "failed"
        latest = await progress.get(task_thread("job-f"))
        assert latest.metadata["reason"] == "failure"
        assert msgspec.json.decode(latest.data) == {"i": 39}

        await publish(bus, "steps", "job-ok", Steps(n=10))
        result = await next_result(bus, "test-results")
        assert result.status == "succeeded"
        assert await progress.latest(task_thread("job-ok")) is None


async def test_agents_without_durable_state_need_no_checkpoint_service(bus: Bus) -> None:
    # No checkpoint service runs here: update() stays in memory and nothing is saved.
    agent = stepper()
    async with agent_on(agent, bus):
        await publish(bus, "steps", "job-plain", Steps(n=3))
        result = await next_result(bus, "test-results", timeout_s=30)
    assert result.status == "succeeded", result.error
    assert not agent.durable.restored.is_set()


async def test_pending_state_is_saved_when_a_stop_cancels_the_handler(
    bus: Bus, svc: Service
) -> None:
    progress = CheckpointClient(bus, "steps")
    agent = stepper(stop_grace_s=0.2)
    async with agent_on(agent, bus):
        await publish(bus, "steps", "job-stop", Steps(n=10_000))

        async def running_a_while() -> bool:
            return await progress.latest(task_thread("job-stop")) is None and bool(agent._in_flight)

        await eventually(running_a_while, timeout_s=30, what="handler running")
        await asyncio.sleep(0.3)  # let it update() a few times; nothing is saved yet
        assert await progress.latest(task_thread("job-stop")) is None
    latest = await progress.get(task_thread("job-stop"))  # saved as the handler was cancelled
    assert latest.metadata["reason"] == "cancelled"
    assert msgspec.json.decode(latest.data)["i"] >= 1
