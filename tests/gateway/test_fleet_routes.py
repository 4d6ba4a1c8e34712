"""The fleet endpoints against a real stack: a process node running echo replicas.

Scheduler, supervisor (process runtime) and gateway run in-process on the test's
nats-server; the echo replica is a real process the supervisor starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import LogLine, encode, utcnow
from agentbus.runtime.delivery import task_consumer_config
from tests._harness.gateway import Gateway, start_gateway, stop_gateway
from tests._harness.polling import eventually
from tests._harness.sse import count, read_sse
from tests._harness.supervisor import echo_process, process_settings, running_supervisor

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

NODE = "node-a"
COOKIE = "agentbus_session"


@pytest.fixture
async def fleet(bus: Bus, scheduler: None, gateway: Gateway) -> AsyncIterator[Gateway]:
    """One process node with the echo deployment (1 replica) running on it."""
    async with running_supervisor(bus, process_settings(NODE, usage_sample_s=0.2)):
        await Client(bus).deploy(echo_process("echo", replicas=1))

        async def running() -> dict[str, Any] | None:
            body = (await gateway.http.get("/v1/deployments/echo")).json()
            return body if body.get("replicas_running") == 1 else None

        await eventually(running, timeout_s=30, what="echo-0 running")
        yield gateway


async def _run_echo(http: httpx.AsyncClient, n: int) -> None:
    for i in range(n):
        created = await http.post("/v1/tasks", json={"capability": "echo", "input": {"i": i}})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        done = await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 20})
        assert done.json()["status"] == "succeeded"


async def test_overview_shows_nodes_replicas_queues_and_throughput(
    bus: Bus, fleet: Gateway
) -> None:
    http = fleet.http
    await _run_echo(http, 3)
    # a capability whose band consumers exist but that nobody pulls: tasks wait there
    for band in (0, 3):
        await bus.js.add_consumer(
            bus.names.tasks_stream, task_consumer_config(bus.names, "idle", band, lease_s=30)
        )
    for priority in (0, 0, 3):
        created = await http.post(
            "/v1/tasks", json={"capability": "idle", "input": 1, "priority": priority}
        )
        assert created.status_code == 201

    async def overview() -> dict[str, Any] | None:
        body = (await http.get("/v1/overview")).json()
        queues = {(q["capability"], q["band"]): q["pending"] for q in body["queues"]}
        measured = [r["cpu_cores"] is not None for n in body["nodes"] for r in n["replicas"]]
        queued = queues.get(("idle", 0)) == 2 and queues.get(("idle", 3)) == 1
        return body if queued and measured == [True] else None

    body = await eventually(overview, what="idle tasks queued, echo-0's usage measured")
    [node] = body["nodes"]
    assert node["node"]["node_id"] == NODE and node["reachable"] is True
    [replica] = node["replicas"]
    assert replica["agent_id"] == "echo-0" and replica["state"] == "running"
    assert replica["restarts"] == 0
    assert replica["cpu_cores"] >= 0.0 and replica["memory_bytes"] > 0  # measured, not declared
    assert body["unassigned"] == []
    assert ("echo", 0) not in {(q["capability"], q["band"]) for q in body["queues"]}  # empty
    assert body["tasks"]["ended"] >= 3 and body["tasks"]["succeeded"] >= 3
    assert body["tasks"]["window_s"] == 60.0
    assert body["dead_letters"] == (await Client(bus).list_tasks("dead", limit=1)).total

    base = str(http.base_url).rstrip("/")
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE: fleet.secret}) as browser:
        page = (await browser.get("/ui/overview")).text
    assert '<th title="CPU in use, % of one core">cpu</th>' in page
    row = page.split('data-agent="echo-0"', 1)[1].split("</tr>", 1)[0]
    cpu = row.split('data-usage="cpu">', 1)[1].split("<", 1)[0]
    mem = row.split('data-usage="mem">', 1)[1].split("<", 1)[0]
    assert cpu.endswith(" %") and mem.endswith("iB"), row  # measured values, not "—"


async def test_deployments_list_placements_and_unplaced_reasons(bus: Bus, fleet: Gateway) -> None:
    http = fleet.http
    selector = {"gpu": "yes"}
    await Client(bus).deploy(echo_process("gpu-echo", replicas=1, node_selector=selector))

    async def listed() -> dict[str, Any] | None:
        body = (await http.get("/v1/deployments")).json()
        views = {d["spec"]["name"]: d for d in body["deployments"]}
        return views if views.get("gpu-echo", {}).get("unplaced") else None

    views = await eventually(listed, what="gpu-echo unplaced")
    assert list(views) == ["echo", "gpu-echo"]
    echo = views["echo"]
    assert echo["replicas_wanted"] == 1 and echo["replicas_running"] == 1
    assert [(p["replica"], p["node_id"]) for p in echo["placements"]] == [(0, NODE)]
    assert echo["spec"]["capabilities"] == ["echo"]
    assert echo["spec"]["env_keys"] == ["AGENTBUS_AGENT_HEARTBEAT_S"]
    assert "env" not in echo["spec"]  # values may be secrets
    [unplaced] = views["gpu-echo"]["unplaced"]
    assert unplaced["replica"] == 0 and "gpu" in unplaced["reason"]
    assert views["gpu-echo"]["replicas"][0]["state"] == "unplaced"

    missing = await http.get("/v1/deployments/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = await http.get("/v1/deployments/Not_A_Name")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


async def test_scale_needs_fleet_admin_and_goes_through_the_scheduler(
    bus: Bus, fleet: Gateway
) -> None:
    reader = await start_gateway(bus, scopes=["fleet:read"])
    try:
        refused = await reader.http.post("/v1/deployments/echo/scale", json={"replicas": 2})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    finally:
        await stop_gateway(reader)
    http = fleet.http
    scaled = await http.post("/v1/deployments/echo/scale", json={"replicas": 2})
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["spec"]["replicas"] == 2 and scaled.json()["change"] == "updated"

    async def two_running() -> bool:
        body = (await http.get("/v1/deployments/echo")).json()
        return bool(body["replicas_running"] == 2)

    await eventually(two_running, timeout_s=30, what="echo scaled to 2 replicas")
    assert (await Client(bus).deployments())["echo"].replicas == 2

    for body, status in (
        ({"replicas": -1}, 400),
        ({"replicas": 2, "extra": 1}, 400),
        ({}, 400),
    ):
        bad = await http.post("/v1/deployments/echo/scale", json=body)
        assert bad.status_code == status, (body, bad.text)
    unknown = await http.post("/v1/deployments/nope/scale", json={"replicas": 1})
    assert unknown.status_code == 404


def _line(data: str) -> str:
    return msgspec.json.decode(data, type=LogLine).line


async def test_logs_stream_a_replica_history_then_live(bus: Bus, fleet: Gateway) -> None:
    http = fleet.http
    first = await read_sse(http, "/v1/logs/echo-0", params={"lines": "1000"}, until=count(1))
    assert all(e.event == "log" and e.id for e in first)
    assert msgspec.json.decode(first[0].data, type=LogLine).agent_id == "echo-0"

    # lines of another agent id, shipped as a supervisor does: the last N come first
    async def ship(text: str) -> None:
        entry = LogLine(agent_id="ghost-0", node_id=NODE, stream="stdout", at=utcnow(), line=text)
        await bus.js.publish(bus.names.log_subject("ghost-0"), encode(entry))

    for i in range(10):
        await ship(f"line {i}")
        await bus.js.publish(bus.names.log_subject("other-0"), b"noise")
    tail = await read_sse(http, "/v1/logs/ghost-0", params={"lines": "3"}, until=count(3))
    assert [_line(e.data) for e in tail] == ["line 7", "line 8", "line 9"]
    everything = await read_sse(http, "/v1/logs/ghost-0", params={"lines": "50"}, until=count(10))
    assert [_line(e.data) for e in everything] == [f"line {i}" for i in range(10)]

    # resumed after the last line seen: the next line, shipped while the stream is open
    resumed = asyncio.create_task(
        read_sse(http, "/v1/logs/ghost-0", headers={"Last-Event-ID": tail[-1].id}, until=count(1))
    )
    await ship("line 10")
    assert [_line(e.data) for e in await resumed] == ["line 10"]

    bad = await http.get("/v1/logs/ghost-0", params={"lines": "-1"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "lines"
