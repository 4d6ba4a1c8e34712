"""HTTP: cancel a task (POST /v1/tasks/{id}/cancel), wait for many (POST /v1/tasks/wait).

Gateway served by uvicorn on a free port, the real scheduler in-process, a real agent
on its own connection, against the session nats-server.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, sleeper
from tests._harness.gateway import Gateway
from tests._harness.polling import eventually

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]


def sleeper_desk(agent_id: str) -> Agent:
    """A ``sleeper`` that also hands ``triage`` tasks off to ``sleep``."""
    agent = sleeper(agent_id, max_concurrency=4)

    @agent.handler("triage")
    async def triage(ctx: TaskContext, value: Any) -> Any:
        return await ctx.handoff("sleep")

    return agent


async def post_task(gateway: Gateway, capability: str, value: Any) -> str:
    r = await gateway.http.post("/v1/tasks", json={"capability": capability, "input": value})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def test_cancel_a_running_task_over_http(
    gateway: Gateway, bus: Bus, bus_settings: BusSettings
) -> None:
    async with agent_running(sleeper_desk("gw-cancel"), bus_settings):
        task_id = await post_task(gateway, "sleep", 600)

        async def running() -> bool:
            r = await gateway.http.get(f"/v1/tasks/{task_id}")
            return bool(r.json()["status"] == "running")

        await eventually(running, what="task running")
        r = await gateway.http.post(f"/v1/tasks/{task_id}/cancel", params={"reason": "stop it"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cancelled"] == [task_id]
        assert body["task"]["status"] == "cancelled"
        assert body["task"]["error"]["message"] == "stop it"
        again = await gateway.http.post(f"/v1/tasks/{task_id}/cancel")
        assert again.status_code == 200 and again.json()["cancelled"] == []
        missing = await gateway.http.post("/v1/tasks/no-such-task/cancel")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


async def test_wait_for_many_tasks_over_http(
    gateway: Gateway, bus: Bus, bus_settings: BusSettings
) -> None:
    async with agent_running(sleeper_desk("gw-wait"), bus_settings):
        slow = await post_task(gateway, "sleep", 1.0)
        fast = await post_task(gateway, "sleep", 0.0)
        chain = await post_task(gateway, "triage", 0.2)

        r = await gateway.http.post(
            "/v1/tasks/wait", json={"task_ids": [slow, fast, chain], "wait_s": 0}
        )
        assert r.status_code == 200, r.text
        assert slow in r.json()["pending"]

        r = await gateway.http.post(
            "/v1/tasks/wait", json={"task_ids": [slow, fast], "wait_s": 20, "until": "any"}
        )
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["pending"] == [slow]
        assert first["tasks"][1]["status"] == "succeeded"

        r = await gateway.http.post(
            "/v1/tasks/wait", json={"task_ids": [slow, fast, chain], "wait_s": 20}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["pending"] == []
        assert [t["output"] for t in body["tasks"]] == [1.0, 0.0, 0.2]
        assert body["tasks"][2]["handoff_from"] == chain  # the chain was followed

        r = await gateway.http.post(
            "/v1/tasks/wait", json={"task_ids": [fast, "no-such-task"], "wait_s": 1}
        )
        assert r.status_code == 404
        r = await gateway.http.post("/v1/tasks/wait", json={"task_ids": [], "wait_s": 1})
        assert r.status_code == 400
