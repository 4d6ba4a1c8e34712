"""Ids and names from HTTP paths, queries, headers and bodies are checked before they
reach a subject or a KV key: 400 naming the rule, never 500, and the gateway stays up.

Gateway served by uvicorn on a free port, the real scheduler in-process, against the
session nats-server.
"""

from __future__ import annotations

import httpx
import pytest

from tests._harness.gateway import Gateway

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]

BAD_IDS = ["x" * 5000, "a b", "a*", "a>", ".a", "a.", "x..y", "tâche", "a\u00a0b", "*", ">"]
ID_RULE = "[A-Za-z0-9_-]"


def assert_bad_request(r: httpx.Response, field: str, rule: str = ID_RULE) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request"
    assert error["field"] == field
    assert rule in error["message"]


async def assert_still_serving(gateway: Gateway) -> None:
    r = await gateway.http.get("/healthz")
    assert r.status_code == 200, r.text
    r = await gateway.http.post("/v1/tasks", json={"capability": "echo"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("task_id", BAD_IDS, ids=lambda v: repr(v[:12]))
async def test_bad_task_id_in_a_path_is_400(gateway: Gateway, task_id: str) -> None:
    for method, path in [
        ("GET", f"/v1/tasks/{task_id}"),
        ("GET", f"/v1/tasks/{task_id}/output"),
        ("POST", f"/v1/tasks/{task_id}/cancel"),
    ]:
        r = await gateway.http.request(method, path)
        assert_bad_request(r, "task_id")
    r = await gateway.http.post(f"/v1/tasks/{task_id}/resubmit", json={})
    assert_bad_request(r, "task_id")
    labels = {"service": "gateway", "source": "/v1/tasks/{task_id}/cancel"}
    assert gateway.metric("agentbus_bad_messages_total", labels) == 1
    await assert_still_serving(gateway)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"capability": "echo", "parent_id": "x" * 5000}, "parent_id"),
        ({"capability": "echo", "parent_id": "a.b"}, "parent_id"),
        ({"capability": "echo", "task_id": "x..y"}, "task_id"),
        ({"capability": "echo", "timeout_s": 0}, "timeout_s"),
    ],
)
async def test_bad_id_in_a_body_is_400(
    gateway: Gateway, body: dict[str, object], field: str
) -> None:
    r = await gateway.http.post("/v1/tasks", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    await assert_still_serving(gateway)


async def test_bad_new_task_id_on_resubmit_is_400(gateway: Gateway) -> None:
    r = await gateway.http.post("/v1/tasks/some-task/resubmit", json={"new_task_id": "a>b"})
    assert_bad_request(r, "new_task_id")


@pytest.mark.parametrize("capability", ["", "A", "a b", "a.b", "*", ">", "x" * 65])
@pytest.mark.parametrize("path", ["/v1/agents", "/v1/tasks"])
async def test_bad_capability_filter_is_400(gateway: Gateway, path: str, capability: str) -> None:
    r = await gateway.http.get(path, params={"capability": capability})
    assert_bad_request(r, "capability", "[a-z0-9_-]")


async def test_unknown_status_filter_is_400(gateway: Gateway) -> None:
    r = await gateway.http.get("/v1/tasks", params={"status": "sleeping"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "status"


@pytest.mark.parametrize("cursor", ["³", "١٢", "x", "1" * 20])
async def test_a_cursor_no_listing_gave_out_is_400(gateway: Gateway, cursor: str) -> None:
    r = await gateway.http.get("/v1/tasks", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    assert "cursor" in r.json()["error"]["message"]


async def test_tasks_listed_by_any_status_with_paging(gateway: Gateway) -> None:
    ids = []
    for _ in range(3):
        r = await gateway.http.post("/v1/tasks", json={"capability": "nobody"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["task_id"])
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # bounded: three tasks, one per page
        params = {"status": "queued", "capability": "nobody", "limit": "1"}
        r = await gateway.http.get(
            "/v1/tasks", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    r = await gateway.http.get("/v1/tasks", params={"status": "any", "capability": "nobody"})
    assert sorted(t["task_id"] for t in r.json()["tasks"]) == sorted(ids)
    r = await gateway.http.get("/v1/tasks", params={"status": "running", "capability": "nobody"})
    assert r.json()["tasks"] == []


@pytest.mark.parametrize("depth", [1000, 2000, 100_000])
async def test_deeply_nested_json_is_400(gateway: Gateway, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = '{"capability": "echo", "input": ' + nested + "}"
    r = await gateway.http.post(
        "/v1/tasks", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "body"
    assert "nested" in r.json()["error"]["message"]
    await assert_still_serving(gateway)


async def test_idempotency_key_header_is_the_task_id(gateway: Gateway) -> None:
    body = {"capability": "echo", "input": "first"}
    first = await gateway.http.post("/v1/tasks", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    assert first.json()["task_id"] == "k-1"
    again = await gateway.http.post(
        "/v1/tasks", json={**body, "input": "second"}, headers={"Idempotency-Key": "k-1"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["input"] == "first"
    same = await gateway.http.post(
        "/v1/tasks", json={**body, "task_id": "k-1"}, headers={"Idempotency-Key": "k-1"}
    )
    assert same.status_code == 200, same.text


async def test_idempotency_key_conflicting_with_task_id_is_400(gateway: Gateway) -> None:
    r = await gateway.http.post(
        "/v1/tasks",
        json={"capability": "echo", "task_id": "k-2"},
        headers={"Idempotency-Key": "k-3"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "Idempotency-Key"
    assert (await gateway.http.get("/v1/tasks/k-2")).status_code == 404
    assert (await gateway.http.get("/v1/tasks/k-3")).status_code == 404


@pytest.mark.parametrize("key", ["a b", "x" * 129, "a.b"])
async def test_bad_idempotency_key_is_400(gateway: Gateway, key: str) -> None:
    r = await gateway.http.post(
        "/v1/tasks", json={"capability": "echo"}, headers={"Idempotency-Key": key}
    )
    assert_bad_request(r, "Idempotency-Key")
