"""A decision reaches the handler across agent restarts (agent processes, SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.client.approvals import decide_approval, list_approvals
from tests._harness.agent_process import agent_process
from tests._harness.approvals import pending_of
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]


@contextmanager
def gate_process(bus: Bus, agent_id: str, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``tests.approvals._gate_agent`` as ``agent_id``; stop and reap it at the end."""
    with agent_process(
        bus,
        "tests.approvals._gate_agent",
        agent_id,
        logs,
        AGENTBUS_AGENT_LEASE_S="2",
        AGENTBUS_AGENT_FETCH_TIMEOUT_S="0.5",
        AGENTBUS_AGENT_RESCAN_S="0.5",
    ) as proc:
        yield proc


@pytest.fixture
async def client(bus: Bus) -> AsyncIterator[Client]:
    async with running_scheduler(bus):
        yield Client(bus)


async def test_decision_after_the_waiting_agent_was_killed(
    bus: Bus, client: Client, tmp_path: Path
) -> None:
    submitted = await client.submit("gate", "drop the table?")
    with gate_process(bus, "gater-a", tmp_path) as first:
        pending = await eventually(
            lambda: pending_of(bus, submitted.task_id), what="the first agent's request"
        )
        assert pending.requested_by == "gater-a"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # nobody runs the task now: decide, then start another agent
    await decide_approval(
        bus, pending.approval_id, "deny", decided_by="cli:carol", comment="not on a Friday"
    )
    with gate_process(bus, "gater-b", tmp_path):
        record = await client.wait(submitted.task_id, timeout_s=40)
    assert record.status == "succeeded", record.error
    output: dict[str, Any] = await client.output(record)
    assert output["option"] == "deny"
    assert output["comment"] == "not on a Friday"
    assert output["decided_by"] == "cli:carol"
    assert output["agent_id"] == "gater-b"
    assert output["attempt"] >= 2
    # one request only: the new attempt found the first one's
    assert len(await list_approvals(bus, status="all", task_id=submitted.task_id)) == 1


async def test_a_restarted_agent_waits_on_the_same_request(
    bus: Bus, client: Client, tmp_path: Path
) -> None:
    submitted = await client.submit("gate", "rotate the keys?")
    with gate_process(bus, "gater-a", tmp_path) as first:
        pending = await eventually(lambda: pending_of(bus, submitted.task_id))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    with gate_process(bus, "gater-b", tmp_path):

        async def held_by_b() -> bool:
            record = await client.get(submitted.task_id)
            return record.status == "running" and record.agent_id == "gater-b"

        await eventually(held_by_b, timeout_s=30, what="the task delivered again to gater-b")
        await decide_approval(bus, pending.approval_id, "approve", decided_by="cli:carol")
        record = await client.wait(submitted.task_id, timeout_s=30)
    assert record.status == "succeeded", record.error
    output: dict[str, Any] = await client.output(record)
    assert (output["option"], output["agent_id"]) == ("approve", "gater-b")
    assert len(await list_approvals(bus, status="all", task_id=submitted.task_id)) == 1
