"""The HTTP gateway served by uvicorn on a free port, against a real nats-server.

Tasks go through the real scheduler (in-process); agents are the real runtime.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agentbus.bus import Bus
from agentbus.messages import AgentInfo, ErrorEvent, GetHealth, HealthReply, encode, utcnow
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings
from agentbus_registry.service import serve as serve_registry
from agentbus_registry.settings import RegistrySettings
from tests._harness.gateway import Gateway, start_gateway, stop_gateway

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]

BAD = {"service": "gateway", "source": "/v1/tasks"}


async def test_post_task_then_get_it(gateway: Gateway) -> None:
    r = await gateway.http.post("/v1/tasks", json={"capability": "echo", "input": {"x": [1, 2]}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["capability"] == "echo"
    assert created["status"] == "queued"
    assert created["input"] == {"x": [1, 2]}
    task_id = created["task_id"]

    r = await gateway.http.get(f"/v1/tasks/{task_id}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["task_id"] == task_id
    assert got["input"] == {"x": [1, 2]}
    assert got["status"] == "queued"


async def test_repeat_post_with_same_task_id_is_idempotent(gateway: Gateway) -> None:
    body = {"capability": "echo", "input": "first", "task_id": "same-id-1", "priority": 3}
    first = await gateway.http.post("/v1/tasks", json=body)
    assert first.status_code == 201, first.text
    again = await gateway.http.post("/v1/tasks", json={**body, "input": "second"})
    assert again.status_code == 200, again.text
    assert again.json()["input"] == "first"
    assert again.json()["created_at"] == first.json()["created_at"]
    assert again.json()["priority"] == 3


async def test_unknown_task_is_404(gateway: Gateway) -> None:
    r = await gateway.http.get("/v1/tasks/no-such-task")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "no-such-task" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"capability": 3}, "capability"),
        ({"input": {"a": 1}}, "capability"),
        ({"capability": "Not A Token"}, "capability"),
        ({"capability": "echo", "priority": 42}, "priority"),
        ({"capability": "echo", "max_attempts": 0}, "max_attempts"),
        ({"capability": "echo", "task_id": "bad id!"}, "task_id"),
        ({"capability": "echo", "capabilty": "typo"}, "capabilty"),
        (b"{not json", "body"),
    ],
)
async def test_bad_body_is_400_naming_the_field_and_counted(
    gateway: Gateway, bus: Bus, body: Any, field: str
) -> None:
    before = gateway.metric("agentbus_bad_messages_total", BAD)
    if isinstance(body, bytes):
        r = await gateway.http.post(
            "/v1/tasks", content=body, headers={"content-type": "application/json"}
        )
    else:
        r = await gateway.http.post("/v1/tasks", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request"
    assert error["field"] == field
    assert field in error["message"]
    assert gateway.metric("agentbus_bad_messages_total", BAD) == before + 1
    # still serving, and the bad request is on the bus as an ErrorEvent
    ok = await gateway.http.post("/v1/tasks", json={"capability": "echo"})
    assert ok.status_code == 201
    subject = bus.names.event_subject("error", "gateway")
    for _ in range(100):
        try:
            msg = await bus.js.get_last_msg(bus.names.events_stream, subject)
            break
        except Exception:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("no ErrorEvent published")
    assert msg.data is not None
    event = msgspec.json.decode(msg.data, type=ErrorEvent)
    assert event.service == "gateway" and event.subject == "POST /v1/tasks"


async def test_bad_query_parameter_is_400(gateway: Gateway) -> None:
    r = await gateway.http.get("/v1/tasks/anything?wait_s=soon")
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "wait_s"
    r = await gateway.http.get("/v1/tasks/anything?wait_s=-1")
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "wait_s"


@pytest.mark.timeout(60)
async def test_get_with_wait_returns_the_terminal_record(gateway: Gateway, bus: Bus) -> None:
    release = asyncio.Event()
    agent = Agent(
        "gated",
        settings=AgentSettings(agent_id="gated-1", fetch_timeout_s=0.5, heartbeat_s=0.5),
    )

    @agent.handler("gated")
    async def gated(ctx: TaskContext, value: Any) -> Any:
        await release.wait()
        return {"echo": value}

    agent_stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(bus, agent_stop))
    try:
        r = await gateway.http.post("/v1/tasks", json={"capability": "gated", "input": 7})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        waiting = asyncio.create_task(gateway.http.get(f"/v1/tasks/{task_id}?wait_s=30"))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the wait returned before the task finished"
        release.set()
        r = await asyncio.wait_for(waiting, 30)
        assert r.status_code == 200, r.text
        record = r.json()
        assert record["status"] == "succeeded"
        assert record["output"] == {"echo": 7}
        assert record["agent_id"] == "gated-1"
    finally:
        release.set()
        agent_stop.set()
        await asyncio.wait_for(agent_task, 15)


async def test_get_with_wait_returns_current_record_when_the_wait_elapses(
    gateway: Gateway,
) -> None:
    r = await gateway.http.post("/v1/tasks", json={"capability": "nobody-has-this"})
    task_id = r.json()["task_id"]
    r = await gateway.http.get(f"/v1/tasks/{task_id}", params={"wait_s": 0.3})
    assert r.status_code == 200
    assert r.json()["status"] == "queued"


async def test_stop_ends_a_pending_wait_with_the_current_record(bus: Bus) -> None:
    gw = await start_gateway(bus)
    try:
        r = await gw.http.post("/v1/tasks", json={"capability": "nobody-has-this"})
        task_id = r.json()["task_id"]
        waiting = asyncio.create_task(gw.http.get(f"/v1/tasks/{task_id}?wait_s=60"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        gw.stop.set()
        r = await asyncio.wait_for(waiting, 10)
        assert r.status_code == 200
        assert r.json()["status"] == "queued"
    finally:
        await stop_gateway(gw)


async def test_agents_and_nodes_come_from_the_registry(gateway: Gateway, bus: Bus) -> None:
    r = await gateway.http.get("/v1/agents")
    assert r.status_code == 503  # no registry yet
    assert r.json()["error"]["code"] == "unavailable"

    stop = asyncio.Event()
    registry_task = asyncio.create_task(
        serve_registry(bus, stop, RegistrySettings(), CollectorRegistry())
    )
    try:
        now = utcnow()
        info = AgentInfo(
            agent_id="a-1",
            name="echo",
            capabilities=["echo"],
            started_at=now - timedelta(seconds=1),
            heartbeat_at=now,
            node_id="node-a",
        )
        kv = await bus.kv(bus.names.agents_bucket)
        await kv.put(info.agent_id, encode(info))
        for _ in range(200):
            r = await gateway.http.get("/v1/agents", params={"capability": "echo"})
            if r.status_code == 200 and r.json()["agents"]:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
        assert [a["agent_id"] for a in r.json()["agents"]] == ["a-1"]
        r = await gateway.http.get("/v1/agents", params={"capability": "review"})
        assert r.status_code == 200 and r.json()["agents"] == []
        r = await gateway.http.get("/v1/nodes")
        assert r.status_code == 200 and r.json() == {"nodes": []}
    finally:
        stop.set()
        await asyncio.wait_for(registry_task, 15)


async def test_healthz_metrics_and_openapi(gateway: Gateway) -> None:
    r = await gateway.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "nats": "connected"}

    await gateway.http.get("/v1/tasks/missing")
    await gateway.http.get("/no/such/route")
    r = await gateway.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    key = (
        "agentbus_gateway_http_requests_total",
        (("method", "GET"), ("route", "/v1/tasks/{task_id}"), ("status", "404")),
    )
    assert samples[key] == 1
    unmatched = (
        "agentbus_gateway_http_requests_total",
        (("method", "GET"), ("route", "unmatched"), ("status", "404")),
    )
    assert samples[unmatched] == 1
    assert any(
        name == "agentbus_gateway_http_request_duration_seconds_count" for name, _ in samples
    )

    r = await gateway.http.get("/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.text)
    assert doc["openapi"].startswith("3.")
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/agents", "/v1/nodes", "/healthz"} <= set(
        doc["paths"]
    )
    assert "capability" in doc["components"]["schemas"]["CreateTask"]["properties"]
    assert "/metrics" not in doc["paths"]


async def test_micro_service_answers_ping_and_health(gateway: Gateway, bus: Bus) -> None:
    reply = await bus.request(bus.names.endpoint("gateway", "health"), GetHealth(), HealthReply)
    assert reply.service == "gateway" and reply.status == "ok"
    assert reply.details["nats"] == "connected"
    msg = await bus.nc.request("$SRV.PING.gateway", b"", timeout=2)
    assert json.loads(msg.data)["name"] == "gateway"
