from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from agentbus.bus import Bus
from agentbus.messages import AgentEvent
from agentbus.settings import BusSettings
from tests._harness.polling import eventually
from tests._harness.registry import Registry, next_event


@pytest.mark.timeout(60)
async def test_echo_agent_joins_and_leaves(
    bus: Bus, bus_settings: BusSettings, registry_service: Registry
) -> None:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "AGENTBUS_AGENT_NODE_ID": "node-x",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentbus.agents.echo",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def listed() -> bool:
            agents = await registry_service.client.agents(capability="echo")
            return len(agents) == 1

        await eventually(listed, timeout_s=20, what="echo agent listed")
        agent = (await registry_service.client.agents())[0]
        assert (agent.node_id, agent.name, agent.pid) == ("node-x", "echo", proc.pid)
        assert await registry_service.client.agents(capability="review") == []
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        left = await next_event(bus, "agent", "left", AgentEvent, timeout_s=10)
        assert isinstance(left, AgentEvent)
        assert (left.agent_id, left.kind) == (agent.agent_id, "left")
        assert await registry_service.client.agents() == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
