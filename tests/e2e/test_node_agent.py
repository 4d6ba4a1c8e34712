"""A Node.js agent written from docs/protocol.md alone serves tasks of the Python stack.

The agent is examples/node-agent/agent.mjs (capability ``upper``); this test runs it
against an embedded stack (nats-server and the five services as processes) and checks
the whole agent contract: registry heartbeat, results, failures, large values through
the Object Store, poison messages, and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import ConsumerInfo

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from tests._harness.node_agent import node, start_agent
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["node"]  # the fixture


@pytest.fixture
async def stack() -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(runtime="process", prefix=f"node{uuid.uuid4().hex[:8]}") as s:
        yield s


async def test_node_agent_serves_tasks(node: str, stack: EmbeddedStack, tmp_path: Path) -> None:
    agent_id = f"node-upper-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": stack.nats_url,
        "AGENTBUS_PREFIX": stack.prefix,
        "AGENTBUS_AGENT_ID": agent_id,
        "AGENTBUS_AGENT_CAPABILITIES": "upper",
        "AGENTBUS_AGENT_MAX_CONCURRENCY": "2",
    }
    log_path = tmp_path / "agent.log"
    proc = start_agent(node, env, log_path)
    bus = await Bus.connect(stack.settings, name="test-node-agent")
    client = Client(bus)

    def agent_log() -> str:
        return log_path.read_text(errors="replace")

    async def listed() -> bool:
        assert proc.poll() is None, f"agent exited {proc.returncode}:\n{agent_log()}"
        return agent_id in {a.agent_id for a in await client.agents("upper")}

    try:
        await eventually(listed, timeout_s=30, what="the node agent in the registry")
        info = next(a for a in await client.agents("upper") if a.agent_id == agent_id)
        assert info.capabilities == ["upper"]
        assert info.pid == proc.pid

        # successes, two at a time (max concurrency 2)
        words = ["hello", "wire protocol", "ünïcode"]
        submitted = [await client.submit("upper", w) for w in words]
        for word, sub in zip(words, submitted, strict=True):
            record = await client.wait(sub.task_id, timeout_s=30)
            assert record.status == "succeeded", (record, agent_log())
            assert await client.output(record, str) == word.upper()
            assert record.agent_id == agent_id
            assert [a.number for a in record.attempts] == [1]

        # a handler error is a failed result with ErrorInfo
        bad = await client.submit("upper", {"fail": "why"})
        failed = await client.wait(bad.task_id, timeout_s=30)
        assert failed.status == "failed", (failed, agent_log())
        assert failed.error is not None
        assert failed.error.error_type == "ValueError"
        assert failed.error.message == "why"

        # over 64 KiB: input and output travel through the Object Store
        big = "abc" * 30_000
        large = await client.submit("upper", big)
        assert large.input_ref is not None
        done = await client.wait(large.task_id, timeout_s=30)
        assert done.status == "succeeded", (done, agent_log())
        assert done.output_ref is not None
        assert done.output is None or bytes(done.output) == b"null"  # msgspec.Raw
        assert await client.output(done, str) == big.upper()

        # heartbeats every 2 s keep the entry alive past the 10 s TTL of <p>_agents
        await asyncio.sleep(11)
        assert await listed(), f"the agent expired from the registry:\n{agent_log()}"

        # a poison message is termed and reported as an ErrorEvent, never retried
        errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_error(msg: Any) -> None:
            await errors.put(json.loads(msg.data))

        error_sub = await bus.nc.subscribe(f"{stack.prefix}.events.error.agent", cb=on_error)
        await bus.js.publish(f"{stack.prefix}.tasks.upper", b"not json at all")
        event = await asyncio.wait_for(errors.get(), timeout=15)
        await error_sub.unsubscribe()
        assert event["type"] == "ErrorEvent"
        assert event["subject"] == f"{stack.prefix}.tasks.upper"

        async def drained() -> bool:
            ci: ConsumerInfo = await bus.js.consumer_info(
                f"{stack.prefix.upper()}_TASKS", "cap-upper"
            )
            return ci.num_pending == 0 and ci.num_ack_pending == 0

        await eventually(drained, timeout_s=10, what="the poison message gone from cap-upper")

        # SIGTERM: exit 0 and leave the registry
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 20)
        assert rc == 0, agent_log()

        async def gone() -> bool:
            return agent_id not in {a.agent_id for a in await client.agents("upper")}

        await eventually(gone, timeout_s=5, what="the node agent gone from the registry")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await bus.close()
