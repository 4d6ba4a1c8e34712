"""The dashboard in a real headless Chromium against a running embedded stack.

Each test logs in with a token, acts over HTTP or by clicking, and waits for the page
to change by itself (no reload: a marker set on the page survives). Screenshots are
saved as test artifacts (``tests/_harness/browser.py``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from tests._harness.browser import browser, login, mark_page, not_reloaded, screenshot
from tests._harness.dashboard import echo_agents
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_deployed_replica_appears_on_the_overview(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await mark_page(page)
        await echo_agents(client, "overview-echo", 2)
        for replica in (0, 1):
            row = page.locator(f'[data-node="embedded"] tr[data-agent="overview-echo-{replica}"]')
            await row.wait_for()
        await page.locator('.page-head .live[data-state="live"]').wait_for()
        assert await not_reloaded(page)
        # some tasks, so the overview has numbers to show
        for n in range(3):
            created = await http.post("/v1/tasks", json={"capability": "echo", "input": {"n": n}})
            assert created.status_code == 201, created.text
            await client.wait(created.json()["task_id"], timeout_s=30)
        rows = page.locator('[data-node="embedded"] tr[data-agent^="overview-echo-"]')

        async def usage_shown() -> bool:  # CPU needs two samples: a later refresh shows it
            cpu = await rows.locator('td[data-usage="cpu"]').all_inner_texts()
            memory = await rows.locator('td[data-usage="mem"]').all_inner_texts()
            return len(cpu) == 2 and all(t.endswith("%") for t in cpu) and "—" not in memory

        await eventually(usage_shown, timeout_s=30, every_s=0.5, what="replica CPU and memory")
        assert await page.locator('[data-stat="tasks-per-s"]').inner_text() != "0.00"
        await screenshot(page, "overview", readme=True)


async def test_a_task_submitted_over_http_succeeds_on_the_tasks_page(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    await echo_agents(client, "tasks-echo", 1)
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/tasks")
        await page.locator('.page-head .live[data-state="live"]').wait_for()
        await mark_page(page)
        task_id = f"dash-{uuid.uuid4().hex[:8]}"
        created = await http.post(
            "/v1/tasks",
            json={"capability": "echo", "input": {"sleep_s": 1.0}, "task_id": task_id},
        )
        assert created.status_code == 201, created.text
        row = page.locator(f'tr[data-task="{task_id}"]')
        await row.wait_for()
        await page.locator(f'tr[data-task="{task_id}"][data-status="succeeded"]').wait_for()
        assert await not_reloaded(page)
        await screenshot(page, "tasks")
        # its page: the attempt, the events as they were stored, the output
        await row.locator("a").click()
        await page.wait_for_url(f"{stack.gateway_url}/tasks/{task_id}")
        events = page.locator("#task-events li")
        await page.locator('#task-events li[data-kind="task.succeeded"]').wait_for()
        kinds = await events.evaluate_all("items => items.map(i => i.dataset.kind)")
        assert kinds[0] == "task.queued" and kinds[-1] == "task.succeeded"
        assert await page.locator(".timeline li.t-succeeded").count() == 1
        assert '"sleep_s": 1.0' in await page.locator("pre.preview").first.inner_text()
        await screenshot(page, "task")


async def test_a_dead_letter_is_resubmitted_from_its_page(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    await echo_agents(client, "dead-echo", 1)
    task_id = f"dead-{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/v1/tasks",
        json={
            "capability": "echo",
            "input": {"fail": "boom"},
            "task_id": task_id,
            "max_attempts": 1,
        },
    )
    assert created.status_code == 201, created.text

    async def dead() -> bool:
        return (await client.get(task_id)).status == "dead"

    await eventually(dead, timeout_s=30, every_s=0.2, what="the task dead-lettered")
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/tasks?status=dead")
        await page.locator(f'tr[data-task="{task_id}"][data-status="dead"]').wait_for()
        await page.goto(f"{stack.gateway_url}/tasks/{task_id}")
        assert "boom" in await page.locator("#task-detail").inner_text()
        await screenshot(page, "dead-letter")
        await page.get_by_role("button", name="Resubmit").click()
        await page.wait_for_url(f"{stack.gateway_url}/tasks/{task_id}-r1")
    again = await client.get(f"{task_id}-r1")
    assert again.resubmit_of == task_id
