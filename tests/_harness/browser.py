"""A headless Chromium for the dashboard tests, driven by Playwright.

The browser is Debian's ``chromium`` (``scripts/setup.sh`` installs it); Playwright's
own browser downloads are never used. Each browser gets a fresh profile directory.
Screenshots go to ``$AGENTBUS_TEST_ARTIFACTS`` (default ``tests/artifacts/``,
gitignored); with ``AGENTBUS_TEST_DASHBOARD_SCREENSHOT=<path>`` the overview screenshot is
also written there (``just dashboard-screenshot`` refreshes ``docs/img/dashboard.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import BrowserContext, Page, ViewportSize, async_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Debian's chromium binary; fails with how to install it when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("no chromium on PATH: apt-get install chromium (scripts/setup.sh)")
    return found


def artifacts_dir() -> Path:
    """Where screenshots go (created)."""
    path = Path(os.environ.get("AGENTBUS_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@asynccontextmanager
async def browser(profile_dir: Path) -> AsyncIterator[BrowserContext]:
    """A headless Chromium with a fresh profile in ``profile_dir`` (laptop viewport)."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=LAPTOP,
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            await context.close()


async def login(page: Page, base_url: str, token: str) -> None:
    """Log in on the dashboard's login page with ``token``; ends on the overview."""
    await page.goto(f"{base_url}/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url}/")


async def screenshot(page: Page, name: str, *, readme: bool = False) -> Path:
    """Save a full-page screenshot as ``<artifacts>/<name>.png``.

    ``readme``: also to ``$AGENTBUS_TEST_DASHBOARD_SCREENSHOT`` when that is set.
    """
    path = artifacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if readme and (target := os.environ.get("AGENTBUS_TEST_DASHBOARD_SCREENSHOT")):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


async def mark_page(page: Page) -> None:
    """Set a marker a reload would erase (see ``not_reloaded``)."""
    await page.evaluate("window.__agentbusTestMark = 1")


async def not_reloaded(page: Page) -> bool:
    """Whether the page still holds the ``mark_page`` marker (no reload since)."""
    return bool(await page.evaluate("window.__agentbusTestMark === 1"))
