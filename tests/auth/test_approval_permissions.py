"""Approval gates under credentials: agents ask and watch, but never decide.

Every refusal is the server's (user JWTs built by ``agentbus.auth.permissions``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.auth.agent_grants import AgentGrant
from agentbus.auth.provision import provision_agent
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.client.approvals import decide_approval
from agentbus.messages import DecideApproval, Deployment, encode
from tests._harness.agents import agent_running
from tests._harness.approvals import GateInput, gate_agent, pending_of
from tests._harness.auth import AuthServer, no_violations_since, refused
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]
GRANT = AgentGrant(agent_id="gater-0", capabilities=("gate", "echo"), deployment="gater")


@pytest.fixture
async def operator(secured: AuthServer, prefix: str) -> AsyncIterator[Bus]:
    operator = await Bus.connect(secured.operator(prefix))
    scheduler = await Bus.connect(secured.service(prefix, "scheduler"))
    try:
        await operator.ensure()
        deployment = Deployment(name="gater", capabilities=["gate", "echo"])
        await provision_agent(operator, deployment, "gater-0")
        async with running_scheduler(scheduler, probe=operator):
            yield operator
    finally:
        await operator.close()
        await scheduler.close()


async def test_an_agent_asks_and_waits_but_cannot_decide(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    client = Client(operator)
    g = gate_agent("gater-0")
    seen = len(secured.server.violations)
    async with agent_running(g.agent, secured.agent(prefix, GRANT)):
        submitted = await client.submit("gate", GateInput())
        pending = await eventually(lambda: pending_of(operator, submitted.task_id))
        assert no_violations_since(secured, seen) == []  # asking and watching are allowed

        agent = await Bus.connect(secured.agent(prefix, GRANT))
        try:
            n = agent.names
            decide = n.endpoint("scheduler", "approval_decide")
            await refused(
                secured,
                decide,
                lambda: decide_approval(agent, pending.approval_id, "approve", decided_by="me"),
            )
            key = f"$KV.{n.approvals_bucket}.{n.approval_key('gate', pending.approval_id)}"
            forged = DecideApproval(approval_id=pending.approval_id, option="x", decided_by="me")
            await refused(secured, key, lambda: agent.js.publish(key, encode(forged), timeout=2))
            as_other = n.owner_endpoint("scheduler", "approval_request", "other-0")
            await refused(secured, as_other, lambda: agent.nc.request(as_other, b"{}", timeout=2))
            theirs = f"$JS.API.CONSUMER.CREATE.KV_{n.approvals_bucket}"
            await refused(
                secured,
                f"{theirs}.x.$KV.{n.approvals_bucket}.other.{pending.approval_id}",
                lambda: agent.nc.request(
                    f"{theirs}.x.$KV.{n.approvals_bucket}.other.{pending.approval_id}",
                    b"{}",
                    timeout=2,
                ),
            )
        finally:
            await agent.close()

        assert await pending_of(operator, submitted.task_id) is not None  # still pending
        await decide_approval(operator, pending.approval_id, "approve", decided_by="cli:op")
        record = await client.wait(submitted.task_id, timeout_s=30)
        assert record.status == "succeeded"
        assert (await client.output(record))["option"] == "approve"


async def test_the_gateway_decides_but_cannot_ask_as_an_agent(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    gateway = await Bus.connect(secured.service(prefix, "gateway"))
    try:
        subject = gateway.names.owner_endpoint("scheduler", "approval_request", "gater-0")
        await refused(secured, subject, lambda: gateway.nc.request(subject, b"{}", timeout=2))
    finally:
        await gateway.close()
