"""Approvals over HTTP: list, read, and decide with and without ``approvals:decide``."""

from __future__ import annotations

import pytest

from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from agentbus.client import Client
from tests._harness.agents import agent_on
from tests._harness.approvals import GateInput, approval_events, gate_agent, pending_of
from tests._harness.gateway import bearer, start_gateway, stop_gateway
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


async def test_only_a_token_with_approvals_decide_decides(bus: Bus) -> None:
    client = Client(bus)
    g = gate_agent("gater-1")
    async with running_scheduler(bus), agent_on(g.agent, bus):
        gw = await start_gateway(bus, scopes=["tasks:read", "tasks:submit"])
        try:
            _, decider = await create_token(bus, "release-manager", ["approvals:decide"])
            submitted = await client.submit("gate", GateInput(summary="migrate the db?"))
            pending = await eventually(lambda: pending_of(bus, submitted.task_id))
            aid = pending.approval_id

            listed = await gw.http.get("/v1/approvals", params={"status": "pending"})
            assert listed.status_code == 200, listed.text
            assert [a["approval_id"] for a in listed.json()["approvals"]] == [aid]
            one = await gw.http.get(f"/v1/approvals/{aid}")
            assert one.status_code == 200 and one.json()["summary"] == "migrate the db?"
            assert (await gw.http.get(f"/v1/approvals/{'0' * 32}")).status_code == 404

            body = {"option": "approve", "comment": "window is open"}
            refused = await gw.http.post(f"/v1/approvals/{aid}/decision", json=body)
            assert refused.status_code == 403, refused.text
            assert (await pending_of(bus, submitted.task_id)) is not None  # still pending

            url = f"/v1/approvals/{aid}/decision"
            bad = await gw.http.post(url, json={"option": "maybe"}, headers=bearer(decider))
            assert bad.status_code == 400, bad.text
            ok = await gw.http.post(url, json=body, headers=bearer(decider))
            assert ok.status_code == 200, ok.text
            decision = ok.json()["decision"]
            assert decision["option"] == "approve"
            assert decision["decided_by"].startswith("token:release-manager/")
            again = await gw.http.post(url, json=body, headers=bearer(decider))
            assert again.status_code == 409, again.text

            record = await client.wait(submitted.task_id, timeout_s=20)
            assert record.status == "succeeded"
            output = await client.output(record)
            assert output["option"] == "approve"
            assert output["comment"] == "window is open"
            assert output["decided_by"] == decision["decided_by"]
            events = await approval_events(bus, aid, 2)
            assert events[1].decided_by == decision["decided_by"]
            decided = await gw.http.get("/v1/approvals", params={"status": "decided"})
            assert [a["approval_id"] for a in decided.json()["approvals"]] == [aid]
        finally:
            await stop_gateway(gw)
