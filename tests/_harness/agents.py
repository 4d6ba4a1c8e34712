"""Helpers of the task-flow tests: test agents, and running them on a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from agentbus.bus import Bus
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings, BusSettings


def quick_settings(agent_id: str, **overrides: object) -> AgentSettings:
    """Agent settings for tests: short lease, heartbeat and pull timeouts."""
    base: dict[str, object] = {
        "agent_id": agent_id,
        "lease_s": 5.0,
        "fetch_timeout_s": 1.0,
        "heartbeat_s": 0.5,
        "stop_grace_s": 2.0,
    }
    base.update(overrides)
    return AgentSettings(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def agent_on(agent: Agent, bus: Bus, *, stop_timeout_s: float = 30) -> AsyncIterator[Agent]:
    """Run ``agent`` on ``bus`` until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(bus, stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout_s)


@asynccontextmanager
async def agent_running(agent: Agent, bus_settings: BusSettings) -> AsyncIterator[Agent]:
    """Run ``agent`` on a connection of its own until the block ends."""
    bus = await Bus.connect(bus_settings, name=f"test-{agent.agent_id}")
    try:
        async with agent_on(agent, bus):
            yield agent
    finally:
        await bus.close()


@dataclass
class Worker:
    """Agent ``worker`` (one slot) whose ``work`` handler returns its input.

    ``started`` lists the ids of the tasks it started, in order; a task whose input is
    ``"blocker"`` runs until ``gate`` is set.
    """

    agent: Agent
    started: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def worker(agent_id: str, **overrides: object) -> Worker:
    """A ``Worker`` with ``quick_settings(agent_id, **overrides)``."""
    w = Worker(Agent("worker", settings=quick_settings(agent_id, **overrides)))

    @w.agent.handler("work")
    async def work(ctx: TaskContext, value: Any) -> Any:
        w.started.append(ctx.task_id)
        if value == "blocker":
            await w.gate.wait()
        return value

    return w


def sleeper(agent_id: str, *, name: str = "sleeper", max_concurrency: int = 8) -> Agent:
    """An agent whose ``sleep`` handler sleeps its input (seconds) and returns it."""
    agent = Agent(name, max_concurrency=max_concurrency, settings=quick_settings(agent_id))

    @agent.handler("sleep")
    async def sleep(ctx: TaskContext, delay_s: float) -> float:
        await asyncio.sleep(delay_s)
        return delay_s

    return agent
