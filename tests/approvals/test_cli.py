"""``agentbus approvals list|show|approve|deny`` against a real stack."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from tests._harness.agents import agent_on
from tests._harness.approvals import GateInput, gate_agent, pending_of
from tests._harness.cli import invoke
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


async def test_approve_and_deny_from_the_cli_resume_the_handlers(bus: Bus) -> None:
    client = Client(bus)
    g = gate_agent("gater-1", max_concurrency=2)
    async with running_scheduler(bus), agent_on(g.agent, bus):
        yes = await client.submit("gate", GateInput(summary="deploy v2?"))
        no = await client.submit("gate", GateInput(summary="drop prod?"))
        asked_yes = await eventually(lambda: pending_of(bus, yes.task_id))
        asked_no = await eventually(lambda: pending_of(bus, no.task_id))

        code, out, err = await asyncio.to_thread(invoke, bus.settings, "approvals", "list")
        assert code == 0, err
        assert asked_yes.approval_id in out and "deploy v2?" in out and "drop prod?" in out

        code, out, err = await asyncio.to_thread(
            invoke,
            bus.settings,
            "approvals",
            "approve",
            asked_yes.approval_id,
            "--comment",
            "looks good",
            "--by",
            "alice",
        )
        assert code == 0, err
        assert json.loads(out)["decision"]["decided_by"] == "cli:alice"
        code, out, err = await asyncio.to_thread(
            invoke, bus.settings, "approvals", "deny", asked_no.approval_id, "-m", "no way"
        )
        assert code == 0, err

        done_yes = await client.wait(yes.task_id, timeout_s=20)
        assert await client.output(done_yes) == {
            "option": "approve",
            "comment": "looks good",
            "decided_by": "cli:alice",
            "timed_out": False,
        }
        done_no = await client.output(await client.wait(no.task_id, timeout_s=20))
        assert (done_no["option"], done_no["comment"]) == ("deny", "no way")

        # deciding again: exit 1, says who decided
        code, _, err = await asyncio.to_thread(
            invoke, bus.settings, "approvals", "deny", asked_yes.approval_id
        )
        assert code == 1 and "cli:alice" in err
        code, out, err = await asyncio.to_thread(
            invoke, bus.settings, "approvals", "list", "--status", "decided", "--json"
        )
        assert code == 0, err
        assert {a["approval_id"] for a in json.loads(out)} == {
            asked_yes.approval_id,
            asked_no.approval_id,
        }
        code, out, err = await asyncio.to_thread(
            invoke, bus.settings, "approvals", "show", asked_no.approval_id
        )
        assert code == 0 and json.loads(out)["decision"]["option"] == "deny"
        code, _, _ = await asyncio.to_thread(invoke, bus.settings, "approvals", "show", "nope")
        assert code == 2
