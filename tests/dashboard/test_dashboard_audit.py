"""The audit page in headless Chromium: a stack whose archiver fills a real PostgreSQL;
one task's events, who decided its approval, what its agent did in a time range."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.messages import Deployment
from tests._harness.browser import ROOT, browser, login, screenshot
from tests._harness.polling import eventually
from tests._harness.postgres import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def stack(postgres: PostgresServer) -> Iterator[EmbeddedStack]:
    """The stack with its archiver writing to a fresh database the gateway reads."""
    running = EmbeddedStack(
        runtime="process",
        prefix=f"dash{uuid.uuid4().hex[:6]}",
        audit_database_url=postgres.create_database(),
    )
    asyncio.run(running.start())
    try:
        yield running
    finally:
        asyncio.run(running.stop())


async def _decided_task(client: Client, http: httpx.AsyncClient) -> tuple[str, str]:
    """A ``gate`` task whose approval was approved over HTTP; its id and agent id."""
    await client.deploy(
        Deployment(
            name="gate",
            command=[sys.executable, "-m", "tests.approvals._gate_agent"],
            capabilities=["gate"],
            env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5", "PYTHONPATH": str(ROOT)},
        )
    )
    task_id = f"audit-{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/v1/tasks", json={"capability": "gate", "input": "deploy to prod?", "task_id": task_id}
    )
    assert created.status_code == 201, created.text

    async def pending() -> str | None:
        got = await http.get("/v1/approvals", params={"task_id": task_id})
        found = got.json()["approvals"] if got.status_code == 200 else []
        return found[0]["approval_id"] if found else None

    approval_id = await eventually(pending, timeout_s=60, what="the approval requested")
    decided = await http.post(
        f"/v1/approvals/{approval_id}/decision", json={"option": "approve", "comment": "ship it"}
    )
    assert decided.status_code == 200, decided.text
    done = await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 30})
    assert done.json()["status"] == "succeeded", done.text

    async def archived() -> bool:
        got = await http.get("/v1/audit/events", params={"task_id": task_id})
        kinds = {(e["entity"], e["kind"]) for e in got.json().get("events", [])}
        return {("task", "succeeded"), ("approval", "decided")} <= kinds

    await eventually(archived, timeout_s=30, what="the task's events archived")
    return task_id, str(done.json()["output"]["agent_id"])


async def test_the_audit_page_shows_a_task_and_who_decided_its_approval(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    task_id, agent_id = await _decided_task(client, http)
    base = stack.gateway_url
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, base, secret)
        # from the task's page to its audit trail
        await page.goto(f"{base}/tasks/{task_id}")
        await page.get_by_role("link", name="audit trail").click()
        await page.wait_for_url(f"{base}/audit?task={task_id}")
        rows = page.locator("table.audit tbody tr")
        await page.locator('tr[data-kind="approval.decided"]').wait_for()
        kinds = await rows.evaluate_all("rows => rows.map(r => r.dataset.kind)")
        assert kinds[0] == "task.queued" and "task.running" in kinds
        assert {"approval.requested", "approval.decided", "task.succeeded"} <= set(kinds)
        succeeded = page.locator('tr[data-kind="task.succeeded"]')
        await succeeded.locator("summary").click()
        assert agent_id in await succeeded.locator("details pre").inner_text()
        await screenshot(page, "audit-task")
        # the approvals: who decided, which option, the comment
        await page.select_option("select[name=view]", "approvals")
        await page.get_by_role("button", name="Show").click()
        await page.wait_for_url(f"{base}/audit?view=approvals*")
        decision = page.locator('tr[data-kind="approval.decided"]', has_text=task_id)
        await decision.wait_for()
        who = await decision.locator("td.decided-by").inner_text()
        assert who.startswith("token:dashboard-test/")
        text = await decision.inner_text()
        assert "approve" in text and "ship it" in text and "deploy to prod?" in text
        await screenshot(page, "audit-approvals")
        # what the agent did in the last hour
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        await page.select_option("select[name=view]", "agent")
        await page.fill("input[name=agent]", agent_id)
        await page.fill("input[name=since]", hour_ago)
        await page.get_by_role("button", name="Show").click()
        await page.wait_for_url(f"{base}/audit?view=agent*")
        ran = page.locator('tr[data-kind="task.running"]', has_text=task_id)
        await ran.wait_for()
        assert await page.locator("table.audit tbody tr").count() >= 2
