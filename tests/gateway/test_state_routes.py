"""Checkpoints, traces, subtask trees and the tenant filter over HTTP, on a real stack.

The checkpoint service, the scheduler and the gateway run in-process on the test's
nats-server; checkpoints and traces are written with the library's own clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus.state.checkpoints import CheckpointClient
from agentbus.traces import Traces
from tests._harness.checkpoint import running_checkpoint
from tests._harness.gateway import Gateway, start_gateway, stop_gateway

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


@pytest.fixture
async def checkpoints(bus: Bus) -> AsyncIterator[None]:
    async with running_checkpoint(bus):
        yield


async def test_checkpoints_owners_threads_versions_and_fork(
    bus: Bus, checkpoints: None, gateway: Gateway
) -> None:
    http = gateway.http
    agent = CheckpointClient(bus, "echo-0")
    v1 = await agent.put("job-1", b"first", parent_id=None, metadata={"step": "1"})
    v2 = await agent.put("job-1", b"second" * 100, parent_id=v1.checkpoint_id)
    await CheckpointClient(bus, "planner-0").put("plan", b"x", parent_id=None)

    owners = (await http.get("/v1/checkpoints/owners")).json()
    assert owners == {"owners": ["echo-0", "planner-0"], "truncated": False}
    threads = (await http.get("/v1/checkpoints/echo-0/threads")).json()
    [thread] = threads["threads"]
    assert thread["thread_id"] == "job-1" and thread["version"] == 2
    assert thread["checkpoint_id"] == v2.checkpoint_id

    page = (await http.get("/v1/checkpoints/echo-0/threads/job-1/versions")).json()
    versions = page["versions"]
    assert [v["version"] for v in versions] == [2, 1]  # newest first
    assert versions[1]["metadata"] == {"step": "1"} and versions[0]["size_bytes"] == 600
    assert versions[0]["parent_id"] == v1.checkpoint_id
    assert all("data" not in v for v in versions)  # metadata only
    older = await http.get(
        "/v1/checkpoints/echo-0/threads/job-1/versions",
        params={"limit": 1, "before": v2.checkpoint_id},
    )
    assert [v["version"] for v in older.json()["versions"]] == [1]

    forked = await http.post(
        "/v1/checkpoints/echo-0/threads/job-1/fork", json={"version": 1, "new_thread": "job-1b"}
    )
    assert forked.status_code == 201, forked.text
    assert forked.json()["checkpoint"]["forked_from"]["checkpoint_id"] == v1.checkpoint_id
    copy = await agent.get("job-1b")
    assert copy.data == b"first" and copy.metadata == {"step": "1"}
    again = await http.post(
        "/v1/checkpoints/echo-0/threads/job-1/fork", json={"new_thread": "job-1b"}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    no_version = await http.post(
        "/v1/checkpoints/echo-0/threads/job-1/fork", json={"version": 9, "new_thread": "x"}
    )
    assert no_version.status_code == 404
    both = await http.post(
        "/v1/checkpoints/echo-0/threads/job-1/fork",
        json={"version": 1, "checkpoint_id": v1.checkpoint_id, "new_thread": "y"},
    )
    assert both.status_code == 400
    unknown_cursor = await http.get(
        "/v1/checkpoints/echo-0/threads/job-1/versions", params={"before": "nope"}
    )
    assert unknown_cursor.status_code == 404

    reader = await start_gateway(bus, scopes=["fleet:read"])
    try:
        refused = await reader.http.post(
            "/v1/checkpoints/echo-0/threads/job-1/fork", json={"new_thread": "z"}
        )
        assert refused.status_code == 403
        assert (await reader.http.get("/v1/checkpoints/owners")).status_code == 200
    finally:
        await stop_gateway(reader)


async def test_traces_kinds_and_strongest(bus: Bus, gateway: Gateway) -> None:
    http = gateway.http
    traces = Traces(bus)
    await traces.define("found_todo", half_life_s=3600)
    await traces.deposit("src/a.py", "found_todo", 5)
    await traces.deposit("src/b.py", "found_todo", 2)
    await traces.deposit("docs/c.md", "found_todo", 9)

    kinds = (await http.get("/v1/traces/kinds")).json()["kinds"]
    assert [k["kind"] for k in kinds] == ["found_todo"] and kinds[0]["half_life_s"] == 3600
    ranked = (await http.get("/v1/traces/found_todo/strongest", params={"limit": 2})).json()
    assert [r["location"] for r in ranked["locations"]] == ["docs/c.md", "src/a.py"]
    assert ranked["locations"][0]["strength"] == pytest.approx(9, rel=0.01)
    under = await http.get("/v1/traces/found_todo/strongest", params={"prefix": "src/"})
    assert [r["location"] for r in under.json()["locations"]] == ["src/a.py", "src/b.py"]

    unknown = await http.get("/v1/traces/nothing_here/strongest")
    assert unknown.status_code == 404
    assert "nothing_here" not in {k.kind for k in await traces.kinds()}  # reading made none


async def test_subtask_tree_and_tenant_filter(bus: Bus, scheduler: None, gateway: Gateway) -> None:
    http = gateway.http

    async def submit(task_id: str, parent: str | None = None, tenant: str | None = None) -> None:
        body = {"capability": "idle", "task_id": task_id, "parent_id": parent, "tenant": tenant}
        reply = await http.post("/v1/tasks", json={k: v for k, v in body.items() if v})
        assert reply.status_code == 201, reply.text

    await submit("root", tenant="acme")
    await submit("a", "root", tenant="acme")
    await submit("b", "root")
    await submit("a1", "a")
    tree = (await http.get("/v1/tasks/root/subtasks")).json()
    assert [(t["task_id"], t["depth"]) for t in tree["tasks"]] == [
        ("root", 0),
        ("a", 1),
        ("a1", 2),
        ("b", 1),
    ]
    assert tree["truncated"] is False and tree["tasks"][2]["parent_id"] == "a"
    small = (await http.get("/v1/tasks/root/subtasks", params={"max_tasks": 2})).json()
    assert small["truncated"] is True and len(small["tasks"]) == 2
    assert (await http.get("/v1/tasks/ghost/subtasks")).status_code == 404

    acme = await http.get("/v1/tasks", params={"status": "any", "tenant": "acme"})
    assert sorted(t["task_id"] for t in acme.json()["tasks"]) == ["a", "root"]
