"""The fleet and state pages of the dashboard in headless Chromium, on a running stack.

Each test acts on a page (a click, a form) or on the bus while the page is open, then
checks both what the page shows (without a reload where the page is live) and the
bus state behind it: replicas really scaled, the forked thread really stored, the
strongest trace locations as ``Traces`` ranks them, the log line really printed.
The last test checks the overview, tasks and task pages fit a phone's width.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from agentbus.auth.tokens import create_token
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.state.checkpoints import CheckpointClient
from agentbus.traces import Traces
from tests._harness.browser import PHONE, browser, login, mark_page, not_reloaded, screenshot
from tests._harness.dashboard import deployed, echo_agents, horizontal_overflow_px, say_deployment
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def short_id() -> str:
    return uuid.uuid4().hex[:6]


async def test_scaling_a_deployment_on_its_page_changes_its_replicas(
    stack: EmbeddedStack, client: Client, secret: str, tmp_path: Path
) -> None:
    name = f"scale-{short_id()}"
    await echo_agents(client, name, 1)
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/deployments")
        card = page.locator(f'article[data-deployment="{name}"]')
        await card.locator(f'tr[data-agent="{name}-0"]').wait_for()
        await mark_page(page)
        await card.locator("input[name=replicas]").fill("3")
        await card.get_by_role("button", name="Scale").click()
        for replica in (1, 2):
            await card.locator(f'tr[data-agent="{name}-{replica}"]').wait_for(timeout=60_000)
        await card.get_by_text("3/3 running").wait_for(timeout=60_000)
        assert await card.locator("input[name=replicas]").input_value() == "3"
        assert await page.locator("#flash").inner_text() == ""
        assert await not_reloaded(page)
        await screenshot(page, "deployments")
    assert (await client.deployments())[name].replicas == 3

    async def three_registered() -> bool:
        running = {a.agent_id for a in await client.agents("echo") if a.deployment == name}
        return running == {f"{name}-0", f"{name}-1", f"{name}-2"}

    await eventually(three_registered, timeout_s=30, every_s=0.2, what="3 replicas registered")


async def test_a_refused_scale_shows_why_in_the_flash_area(
    stack: EmbeddedStack, client: Client, tmp_path: Path
) -> None:
    # A viewer's token may read the fleet but not change it (fleet:admin): the gateway
    # refuses the scale with 403 and the card stays as it was. (Deleting the
    # deployment behind the page's back would race the live refresh removing its card.)
    name = f"refused-{short_id()}"
    await echo_agents(client, name, 1)
    _, viewer = await create_token(client.bus, f"viewer-{name}", ("fleet:read", "events:read"))
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, viewer)
        await page.goto(f"{stack.gateway_url}/deployments")
        card = page.locator(f'article[data-deployment="{name}"]')
        await card.locator("input[name=replicas]").fill("2")
        await card.get_by_role("button", name="Scale").click()
        await page.locator("#flash").get_by_text(f"scale {name}").wait_for()
        refusal = await page.locator("#flash").inner_text()
        assert "HTTP 403" in refusal and "fleet:admin" in refusal, refusal
    assert (await client.deployments())[name].replicas == 1


async def test_forking_a_checkpoint_thread_on_its_page_stores_the_new_thread(
    stack: EmbeddedStack, client: Client, secret: str, tmp_path: Path
) -> None:
    owner, thread, fork = f"owner-{short_id()}", "plan", f"plan-{short_id()}"
    checkpoints = CheckpointClient(client.bus, owner)
    first = await checkpoints.put(thread, b"draft one", parent_id=None, metadata={"step": "1"})
    await checkpoints.put(thread, b"draft two", parent_id=first.checkpoint_id)
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/checkpoints")
        await page.get_by_role("link", name=owner, exact=True).click()
        await page.get_by_role("link", name=thread, exact=True).click()
        await page.wait_for_url(f"{stack.gateway_url}/checkpoints/{owner}/{thread}")
        version_one = page.locator('tbody tr[data-version="1"]')
        await version_one.locator("input[name=new_thread]").fill(fork)
        await screenshot(page, "checkpoints")
        await version_one.get_by_role("button", name="Fork").click()
        await page.wait_for_url(f"{stack.gateway_url}/checkpoints/{owner}/{fork}")
        origin = page.locator(f'tr[data-version="1"] [data-forked-from="{thread}"]')
        assert (await origin.inner_text()).split() == ["forked", "from", f"{thread}@1"]
    forked = await checkpoints.get(fork)
    assert forked.data == b"draft one"
    assert forked.metadata.get("step") == "1"
    assert {t.thread_id for t in await checkpoints.threads()} == {thread, fork}


async def test_a_thread_in_a_namespace_is_browsed_and_forked_within_it(
    stack: EmbeddedStack, client: Client, secret: str, tmp_path: Path
) -> None:
    owner, thread, fork, ns = f"owner-{short_id()}", "plan", f"plan-{short_id()}", "subgraph:a"
    checkpoints = CheckpointClient(client.bus, owner)
    await checkpoints.put(thread, b"in the namespace", parent_id=None, namespace=ns)
    await checkpoints.put(thread, b"elsewhere", parent_id=None)  # same id, default namespace
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/checkpoints/{owner}")
        namespaced = page.locator("tbody tr", has_text=ns)
        await namespaced.get_by_role("link", name=thread, exact=True).click()
        await page.locator('tbody tr[data-version="1"]').wait_for()
        assert ns in await page.locator("h1").inner_text()
        await page.locator("input[name=new_thread]").fill(fork)
        await page.get_by_role("button", name="Fork").click()
        await page.locator('[data-forked-from="plan"]').wait_for()
        assert ns in await page.locator("h1").inner_text()
    forked = await checkpoints.get(fork, namespace=ns)
    assert forked.data == b"in the namespace"
    assert {(t.thread_id, t.namespace) for t in await checkpoints.threads()} == {
        (thread, ns),
        (thread, ""),
        (fork, ns),
    }


async def test_the_traces_page_ranks_the_strongest_locations_and_follows_deposits(
    stack: EmbeddedStack, client: Client, secret: str, tmp_path: Path
) -> None:
    kind = f"reviewed-{short_id()}"
    traces = Traces(client.bus)
    await traces.define(kind, half_life_s=3600)
    await traces.deposit("src/app.py", kind, 5)
    await traces.deposit("src/db.py", kind, 2)
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/traces")
        card = page.locator(f'article[data-kind="{kind}"]')
        rows = card.locator("tr[data-location]")
        shown = await rows.evaluate_all("rows => rows.map(r => r.dataset.location)")
        assert shown == ["src/app.py", "src/db.py"]
        await mark_page(page)
        await traces.deposit("src/api.py", kind, 9)  # the new strongest, while the page is open

        async def api_first() -> bool:
            return await rows.first.get_attribute("data-location") == "src/api.py"

        await eventually(api_first, timeout_s=20, every_s=0.2, what="src/api.py ranked first")
        assert await not_reloaded(page)
        shown = await rows.evaluate_all("rows => rows.map(r => r.dataset.location)")
        await screenshot(page, "traces")
    ranked = [location for location, _ in await traces.strongest(kind)]
    assert shown == ranked == ["src/api.py", "src/app.py", "src/db.py"]


async def test_a_line_the_agent_prints_appears_on_its_open_log_page(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    name = f"say-{short_id()}"
    await deployed(client, say_deployment(name, capability=name))
    agent_id = f"{name}-0"
    before, after = f"before-{short_id()}", f"after-{short_id()}"
    said = await http.post("/v1/tasks", json={"capability": name, "input": before})
    assert said.status_code == 201, said.text
    await client.wait(said.json()["task_id"], timeout_s=30)
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/logs/{agent_id}")
        log = page.locator("#log-lines")
        await log.get_by_text(before).wait_for()  # the history
        await page.locator('[data-events-state="live"]').wait_for()
        await mark_page(page)
        assert after not in await log.inner_text()
        said = await http.post("/v1/tasks", json={"capability": name, "input": after})
        assert said.status_code == 201, said.text
        await log.get_by_text(after).wait_for()
        assert await not_reloaded(page)
        await screenshot(page, "logs")
    record = await client.wait(said.json()["task_id"], timeout_s=30)
    assert record.status == "succeeded" and record.agent_id == agent_id


async def test_the_agents_page_groups_live_agents_by_capability(
    stack: EmbeddedStack, client: Client, secret: str, tmp_path: Path
) -> None:
    echo_name, say_name = f"cap-{short_id()}", f"cap-{short_id()}"
    await echo_agents(client, echo_name, 2)
    say_capability = f"say-{short_id()}"
    await deployed(client, say_deployment(say_name, capability=say_capability))
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await login(page, stack.gateway_url, secret)
        await page.goto(f"{stack.gateway_url}/agents")
        await page.locator('.page-head .live[data-state="live"]').wait_for()
        echo = page.locator('section[data-capability="echo"]')
        say = page.locator(f'section[data-capability="{say_capability}"]')
        for replica in (0, 1):
            await echo.locator(f'tr[data-agent="{echo_name}-{replica}"]').wait_for()
        await say.locator(f'tr[data-agent="{say_name}-0"]').wait_for()
        assert await echo.locator(f'tr[data-agent="{say_name}-0"]').count() == 0
        assert await say.locator(f'tr[data-agent^="{echo_name}-"]').count() == 0
        await mark_page(page)
        await client.scale(say_name, 2)  # a new agent joins while the page is open
        await say.locator(f'tr[data-agent="{say_name}-1"]').wait_for(timeout=60_000)
        assert await not_reloaded(page)
        await screenshot(page, "agents")
    says = {a.agent_id for a in await client.agents(say_capability) if a.deployment == say_name}
    assert says == {f"{say_name}-0", f"{say_name}-1"}


async def test_overview_tasks_and_task_pages_fit_a_phone_screen(
    stack: EmbeddedStack, client: Client, http: httpx.AsyncClient, secret: str, tmp_path: Path
) -> None:
    name = f"phone-{short_id()}"
    await echo_agents(client, name, 2)
    task_id = f"phone-{uuid.uuid4().hex}"  # a long id, as generated ones are
    long_input = {"note": "x" * 300, "path": "/".join(["deeply-nested-directory"] * 12)}
    created = await http.post(
        "/v1/tasks", json={"capability": "echo", "input": long_input, "task_id": task_id}
    )
    assert created.status_code == 201, created.text
    assert (await client.wait(task_id, timeout_s=30)).status == "succeeded"
    async with browser(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.set_viewport_size(PHONE)
        await login(page, stack.gateway_url, secret)
        pages = {
            "overview": ("/", f'tr[data-agent="{name}-1"]'),
            "tasks": ("/tasks", f'tr[data-task="{task_id}"]'),
            "task": (f"/tasks/{task_id}", '#task-events li[data-kind="task.succeeded"]'),
        }
        for label, (path, shown) in pages.items():
            await page.goto(f"{stack.gateway_url}{path}")
            await page.locator(shown).wait_for()
            await screenshot(page, f"{label}-phone")
            overflow = await horizontal_overflow_px(page)
            assert overflow <= 1, f"{label} is {overflow} px wider than a phone's screen"
