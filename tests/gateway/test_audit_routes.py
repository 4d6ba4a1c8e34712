"""``GET /v1/audit/events`` and the dashboard's ``/audit`` page over plain HTTP: a real
PostgreSQL the archiver filled from a real events stream; no database; a database down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from agentbus.audit import AuditSettings
from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from agentbus.embedded import free_port
from tests._harness.archiver import fill_sample_trail
from tests._harness.gateway import Gateway, start_gateway, stop_gateway

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]
COOKIE = "agentbus_session"


async def _fill(bus: Bus, url: str) -> None:
    """The sample trail; ``task-a``'s approval was denied by alice."""
    request = {"task_id": "task-a", "summary": "push to main", "requested_by": "echo-0"}
    decision = {"task_id": "task-a", "decided_by": "alice", "option": "deny", "comment": "no"}
    await fill_sample_trail(bus, url, request, decision)


def _audit(url: str | None, timeout_s: float = 2.0) -> AuditSettings:
    return AuditSettings(database_url=SecretStr(url) if url else None, connect_timeout_s=timeout_s)


@pytest.fixture
async def filled(bus: Bus, audit_database_url: str) -> AsyncIterator[Gateway]:
    """A gateway reading an audit trail the archiver filled (``_fill``)."""
    await _fill(bus, audit_database_url)
    gw = await start_gateway(bus, audit=_audit(audit_database_url))
    yield gw
    await stop_gateway(gw)


def page_client(gw: Gateway, secret: str) -> httpx.AsyncClient:
    """A browser-like client logged in to the dashboard with ``secret``."""
    base = str(gw.http.base_url).rstrip("/")
    return httpx.AsyncClient(base_url=base, cookies={COOKIE: secret}, timeout=10.0)


async def test_each_question_gets_its_events_oldest_first(filled: Gateway) -> None:
    http = filled.http
    task = await http.get("/v1/audit/events", params={"task_id": "task-a"})
    assert task.status_code == 200, task.text
    body = task.json()
    assert body["view"] == "task" and body["truncated"] is False
    assert [(e["seq"], e["entity"], e["kind"]) for e in body["events"]] == [
        (1, "task", "queued"),
        (2, "task", "running"),
        (4, "task", "succeeded"),
        (6, "approval", "requested"),
        (7, "approval", "decided"),
    ]
    assert body["events"][1]["payload"]["agent_id"] == "echo-0"

    approvals = (await http.get("/v1/audit/events", params={"approvals": "true"})).json()
    decided = approvals["events"][-1]
    assert approvals["view"] == "approvals" and len(approvals["events"]) == 2
    assert decided["payload"]["decided_by"] == "alice" and decided["payload"]["option"] == "deny"

    recent = await http.get(
        "/v1/audit/events", params={"agent_id": "echo-0", "since": "2000-01-01T00:00:00Z"}
    )
    assert [e["seq"] for e in recent.json()["events"]] == [5, 2, 4]  # the join is oldest
    first = await http.get("/v1/audit/events", params={"agent_id": "echo-0", "limit": 1})
    assert first.json()["truncated"] is True and len(first.json()["events"]) == 1

    none = await http.get("/v1/audit/events")
    both = await http.get("/v1/audit/events", params={"task_id": "t", "agent_id": "a"})
    assert none.status_code == both.status_code == 400
    # a bare number is not an RFC 3339 time (the OpenAPI document says date-time)
    stamp = await http.get("/v1/audit/events", params={"task_id": "t", "until": "363095276"})
    assert stamp.status_code == 400 and "until" in stamp.text
    assert "approvals=true" in none.json()["error"]["message"]


async def test_the_audit_trail_needs_tasks_read(bus: Bus, filled: Gateway) -> None:
    # it holds task inputs, outputs and approval comments: a monitoring token is refused
    _, reader = await create_token(bus, "fleet-only", ["fleet:read"])
    async with filled.client(reader) as http:
        refused = await http.get("/v1/audit/events", params={"approvals": "true"})
    assert refused.status_code == 403, refused.text
    async with page_client(filled, reader) as browser:
        page = await browser.get("/audit")
    assert page.status_code == 200 and 'data-state="forbidden"' in page.text
    assert "alice" not in page.text


async def test_the_page_shows_a_task_and_who_decided_its_approval(filled: Gateway) -> None:
    async with page_client(filled, filled.secret) as browser:
        task = await browser.get("/audit", params={"task": "task-a"})
        approvals = await browser.get("/audit", params={"view": "approvals"})
        other = await browser.get("/audit", params={"view": "approvals", "task": "task-b"})
        agent = await browser.get(
            "/audit", params={"view": "agent", "agent": "echo-0", "since": "2000-01-01T00:00"}
        )
    assert task.status_code == 200, task.text
    assert task.text.count("<tr data-seq=") == 5 and 'data-kind="task.running"' in task.text
    assert '<option value="task" selected>' in task.text
    assert approvals.text.count("<tr data-seq=") == 2
    assert '<td class="decided-by">alice</td>' in approvals.text
    assert "push to main" in approvals.text
    assert other.status_code == 200 and "<tr data-seq=" not in other.text  # task-b: none
    assert agent.text.count("<tr data-seq=") == 3 and 'data-kind="agent.joined"' in agent.text


async def test_without_a_database_the_page_says_how_to_configure_one(bus: Bus) -> None:
    gw = await start_gateway(bus, audit=_audit(None))
    try:
        api = await gw.http.get("/v1/audit/events", params={"approvals": "true"})
        async with page_client(gw, gw.secret) as browser:
            page = await browser.get("/audit")
    finally:
        await stop_gateway(gw)
    assert api.status_code == 503 and api.json()["error"]["code"] == "unavailable"
    assert "AGENTBUS_AUDIT_DATABASE_URL" in api.json()["error"]["message"]
    assert page.status_code == 200 and 'data-state="not-configured"' in page.text
    assert "No audit database is configured" in page.text
    assert "AGENTBUS_AUDIT_DATABASE_URL" in page.text
    reason = {"reason": "not_configured"}
    assert gw.metric("agentbus_gateway_audit_failures_total", reason) == 2


async def test_a_database_that_is_down_is_reported_unavailable(bus: Bus) -> None:
    closed = f"postgresql://agentbus@127.0.0.1:{free_port()}/agentbus"
    gw = await start_gateway(bus, audit=_audit(closed, timeout_s=1.0))
    try:
        api = await gw.http.get("/v1/audit/events", params={"task_id": "task-a"})
        async with page_client(gw, gw.secret) as browser:
            page = await browser.get("/audit", params={"task": "task-a"})
            health = await gw.http.get("/healthz")
    finally:
        await stop_gateway(gw)
    assert api.status_code == 503 and "unreachable" in api.json()["error"]["message"]
    assert page.status_code == 200 and 'data-state="unavailable"' in page.text
    assert "Audit trail: unavailable." in page.text and "unreachable" in page.text
    assert health.status_code == 200  # the gateway keeps serving
    assert gw.metric("agentbus_gateway_audit_failures_total", {"reason": "unreachable"}) == 2
