"""The Node.js example agent follows the retry, dead-letter and deadline rules of
docs/protocol.md: retryable failures come back after a backoff (nak with delay), the
last one ends the task dead, fatal errors fail at once, a task past its deadline never
starts."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import Backoff, utcnow
from agentbus.settings import BusSettings
from tests._harness.node_agent import node, start_agent
from tests._harness.polling import eventually
from tests._harness.work_stream import scheduler, stream_messages

__all__ = ["node"]  # the fixture
pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(120)]


async def test_node_agent_retries_then_dies_and_respects_deadlines(
    node: str, bus: Bus, bus_settings: BusSettings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "AGENTBUS_AGENT_ID": f"node-upper-{uuid.uuid4().hex[:6]}",
        "AGENTBUS_AGENT_CAPABILITIES": "upper",
    }
    log = tmp_path / "agent.log"
    quick = Backoff(initial_s=0.2, factor=2.0, max_s=1.0, jitter=0.0)
    async with scheduler(bus) as s:
        proc = start_agent(node, env, log)
        try:
            await eventually(lambda: _bound(bus), timeout_s=30, what="node agent bound")
            flaky = await s.client.submit(
                "upper", {"flaky": 2, "text": "third time"}, max_attempts=3, backoff=quick
            )
            hopeless = await s.client.submit(
                "upper", {"flaky": 99, "text": "x"}, max_attempts=2, backoff=quick
            )
            fatal = await s.client.submit("upper", {"fail": "no"}, max_attempts=3)
            late = await s.client.submit("upper", "late", deadline=utcnow() - timedelta(seconds=1))
            ok = await s.client.wait(flaky.task_id, timeout_s=30)
            dead = await s.client.wait(hopeless.task_id, timeout_s=30)
            failed = await s.client.wait(fatal.task_id, timeout_s=30)
            expired = await s.client.wait(late.task_id, timeout_s=30)
            assert await eventually(lambda: _empty(bus), what="work stream empty")
        finally:
            proc.terminate()
            proc.wait(15)
    agent_log = log.read_text(errors="replace")
    assert ok.status == "succeeded", agent_log
    assert msgspec.json.decode(ok.output) == "THIRD TIME"
    assert [(a.number, a.status) for a in ok.attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert ok.attempts[0].error is not None and ok.attempts[0].error.retryable
    assert ok.attempts[0].finished_at is not None
    assert ok.attempts[1].started_at - ok.attempts[0].finished_at >= timedelta(seconds=0.2)
    assert dead.status == "dead" and len(dead.attempts) == 2, agent_log
    assert dead.error is not None and dead.error.error_type == "FlakyError"
    assert failed.status == "failed" and len(failed.attempts) == 1
    assert failed.error is not None and failed.error.error_type == "ValueError"
    assert expired.status == "expired" and expired.attempts == []


async def _bound(bus: Bus) -> bool:
    """The agent is up once its heartbeat is in the registry bucket."""
    kv = await bus.kv(bus.names.agents_bucket)
    try:
        return bool(await kv.keys())
    except Exception:  # no keys yet
        return False


async def _empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0
