"""Helpers of the task-flow tests: an agent on its own connection, a start-order log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agentbus.bus import Bus
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings, BusSettings


def quick_settings(agent_id: str, **overrides: object) -> AgentSettings:
    """Agent settings for tests: short lease, heartbeat and pull timeouts."""
    base: dict[str, object] = {"agent_id": agent_id, "lease_s": 5.0, "fetch_timeout_s": 1.0,
                               "heartbeat_s": 0.5, "stop_grace_s": 2.0}  # fmt: skip
    base.update(overrides)
    return AgentSettings(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def agent_running(agent: Agent, bus_settings: BusSettings) -> AsyncIterator[Agent]:
    """Run ``agent`` on a connection of its own until the block ends."""
    bus = await Bus.connect(bus_settings, name=f"test-{agent.agent_id}")
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(bus, stop))
    try:
        yield agent
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 20)
        finally:
            await bus.close()
