"""Approvals on the dashboard in headless Chromium: approve with a click, the task ends."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.messages import Deployment
from tests._harness.browser import ROOT, browser, login, mark_page, not_reloaded, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    running = EmbeddedStack(runtime="process", prefix=f"dash{uuid.uuid4().hex[:6]}")
    asyncio.run(running.start())
    try:
        yield running
    finally:
        asyncio.run(running.stop())


async def test_an_approval_approved_with_a_click_completes_the_waiting_task(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    await client.deploy(
        Deployment(
            name="gate",
            command=[sys.executable, "-m", "tests.approvals._gate_agent"],
            capabilities=["gate"],
            env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5", "PYTHONPATH": str(ROOT)},
        )
    )
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/approvals")
        await page.locator('.page-head .live[data-state="live"]').wait_for()
        await mark_page(page)
        task_id = f"gate-{uuid.uuid4().hex[:8]}"
        created = await http.post(
            "/v1/tasks",
            json={"capability": "gate", "input": "push to main?", "task_id": task_id},
        )
        assert created.status_code == 201, created.text
        card = page.locator("article.approval", has_text=task_id)
        await card.wait_for(timeout=60_000)
        assert await not_reloaded(page)
        await card.locator("textarea[name=comment]").fill("looks fine")
        await screenshot(page, "approvals")
        await card.locator('button[data-option="approve"]').click()
        await card.wait_for(state="detached")
        done = await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 30})
        assert done.json()["status"] == "succeeded", done.text
        output = done.json()["output"]
        assert output["option"] == "approve" and output["comment"] == "looks fine"
        assert output["decided_by"].startswith("token:dashboard-test/")
        decided = page.locator("table tr", has_text=task_id)
        await decided.wait_for()
        assert "approve" in await decided.inner_text()
