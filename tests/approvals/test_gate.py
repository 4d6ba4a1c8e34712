"""``ctx.request_approval`` against a real nats-server, scheduler and agent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.client.approvals import decide_approval, get_approval
from agentbus.errors import ConflictError, ContractError
from tests._harness.agents import agent_on
from tests._harness.approvals import GateInput, approval_events, gate_agent, pending_of
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


@pytest.fixture
async def client(bus: Bus) -> AsyncIterator[Client]:
    async with running_scheduler(bus):
        yield Client(bus)


async def test_approve_resumes_the_handler_with_option_and_comment(
    bus: Bus, client: Client
) -> None:
    g = gate_agent("gater-1")
    async with agent_on(g.agent, bus):
        submitted = await client.submit("gate", GateInput())
        pending = await eventually(
            lambda: pending_of(bus, submitted.task_id), what="the approval request"
        )
        assert pending.summary == "push to main?"
        assert pending.options == ["approve", "deny"]
        assert pending.requested_by == "gater-1"
        decided = await decide_approval(
            bus, pending.approval_id, "approve", decided_by="cli:alice", comment="ship it"
        )
        assert decided.status == "decided"
        record = await client.wait(submitted.task_id, timeout_s=20)
        assert record.status == "succeeded"
        assert await client.output(record) == {
            "option": "approve",
            "comment": "ship it",
            "decided_by": "cli:alice",
            "timed_out": False,
        }
        with pytest.raises(ConflictError):
            await decide_approval(bus, pending.approval_id, "deny", decided_by="cli:bob")
        events = await approval_events(bus, pending.approval_id, 2)
        assert [e.kind for e in events] == ["requested", "decided"]
        assert events[0].task_id == submitted.task_id
        assert events[1].option == "approve"
        assert events[1].decided_by == "cli:alice"
        assert events[1].comment == "ship it"


async def test_deny_resumes_the_handler_with_deny(bus: Bus, client: Client) -> None:
    g = gate_agent("gater-1")
    async with agent_on(g.agent, bus):
        submitted = await client.submit("gate", GateInput())
        pending = await eventually(lambda: pending_of(bus, submitted.task_id))
        with pytest.raises(ContractError):
            await decide_approval(bus, pending.approval_id, "maybe", decided_by="cli:alice")
        await decide_approval(bus, pending.approval_id, "deny", decided_by="cli:alice")
        record = await client.wait(submitted.task_id, timeout_s=20)
        output = await client.output(record)
        assert output["option"] == "deny"


async def test_timeout_takes_the_default(bus: Bus, client: Client) -> None:
    g = gate_agent("gater-1")
    async with agent_on(g.agent, bus):
        # the task's own timeout is shorter than the approval's: the wait stops its clock
        submitted = await client.submit(
            "gate", GateInput(timeout_s=2.0, default="deny"), timeout_s=1.0
        )
        record = await client.wait(submitted.task_id, timeout_s=20)
        assert record.status == "succeeded", record.error
        assert await client.output(record) == {
            "option": "deny",
            "comment": "",
            "decided_by": "timeout",
            "timed_out": True,
        }
        approval = await client_approvals(bus, submitted.task_id)
        assert approval.decision is not None and approval.decision.decided_by == "timeout"
        events = await approval_events(bus, approval.approval_id, 2)
        assert [e.kind for e in events] == ["requested", "decided"]
        assert events[1].decided_by == "timeout"


async def client_approvals(bus: Bus, task_id: str):  # type: ignore[no-untyped-def]
    from agentbus.client.approvals import list_approvals

    found = await list_approvals(bus, status="all", task_id=task_id)
    assert len(found) == 1
    return await get_approval(bus, found[0].approval_id)


async def test_a_parked_task_frees_its_slot(bus: Bus, client: Client) -> None:
    g = gate_agent("gater-1", max_concurrency=1)
    async with agent_on(g.agent, bus):
        gated = await client.submit("gate", GateInput())
        pending = await eventually(lambda: pending_of(bus, gated.task_id))
        echoed = await client.submit("echo", "hello")
        record = await client.wait(echoed.task_id, timeout_s=20)
        assert record.status == "succeeded"
        await decide_approval(bus, pending.approval_id, "approve", decided_by="cli:alice")
        assert (await client.wait(gated.task_id, timeout_s=20)).status == "succeeded"
