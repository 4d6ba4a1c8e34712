"""Dashboard sessions over plain HTTP: login, the cookie, what it opens, what it does not.

The browser flows are in tests/dashboard/; these check the rules one request at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from tests._harness.gateway import Gateway, start_gateway, stop_gateway

COOKIE = "agentbus_session"


def browser_client(gw: Gateway) -> httpx.AsyncClient:
    """A client like a browser: no Authorization header, same-origin headers."""
    base = str(gw.http.base_url).rstrip("/")
    return httpx.AsyncClient(base_url=base, timeout=10.0, headers={"origin": base})


async def test_pages_redirect_to_login_without_a_session(gateway: Gateway) -> None:
    async with browser_client(gateway) as browser:
        page = await browser.get("/tasks")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        fragment = await browser.get("/ui/overview", headers={"hx-request": "true"})
        assert fragment.headers["hx-redirect"] == "/login"
        login = await browser.get("/login")
        assert login.status_code == 200 and 'id="token"' in login.text


async def test_login_sets_an_httponly_strict_cookie_and_a_bad_token_none(
    gateway: Gateway,
) -> None:
    async with browser_client(gateway) as browser:
        bad = await browser.post("/login", json={"token": "abt_0123456789ab_nope"})
        assert COOKIE not in bad.cookies and "notice-error" in bad.text
        good = await browser.post("/login", json={"token": gateway.secret})
        assert good.headers["hx-redirect"] == "/"
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # plain HTTP here; TLS adds Secure
        assert browser.cookies[COOKIE] == gateway.secret
        overview = await browser.get("/")  # no scheduler here: the page says so
        assert overview.status_code == 200 and "<h1>Overview</h1>" in overview.text
        assert 'data-state="error"' in overview.text and "scheduler" in overview.text
        out = await browser.post("/logout")
        assert out.headers["hx-redirect"] == "/login" and COOKIE not in browser.cookies


async def test_the_cookie_opens_pages_and_event_streams_but_not_json_routes(
    scheduler: None, gateway: Gateway
) -> None:
    cookies = {COOKIE: gateway.secret}
    base = str(gateway.http.base_url).rstrip("/")
    async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=10.0) as browser:
        assert (await browser.get("/v1/nodes")).status_code == 401
        async with browser.stream("GET", "/v1/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        # a state change carried by the cookie must come from the dashboard's own origin
        foreign = await browser.post("/ui/tasks/t1/cancel")
        assert foreign.status_code == 403, foreign.text
        assert "dashboard" in foreign.json()["error"]["message"]
        own = await browser.post("/ui/tasks/t1/cancel", headers={"origin": base})
        assert own.status_code == 200 and "HTTP 404" in own.text  # reached the API


async def test_pages_keep_the_token_scopes(bus: Bus, gateway: Gateway) -> None:
    _, tasks_only = await create_token(bus, "tasks-only", ["tasks:read"])
    base = str(gateway.http.base_url).rstrip("/")
    cookies = {COOKIE: tasks_only}
    async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=10.0) as browser:
        overview = await browser.get("/ui/overview")
        assert 'data-state="forbidden"' in overview.text and "fleet:read" in overview.text
        tasks = await browser.get("/ui/tasks", params={"status": "dead"})
        assert 'data-state="forbidden"' not in tasks.text


@pytest.fixture
async def open_gateway(bus: Bus) -> AsyncIterator[Gateway]:
    gw = await start_gateway(bus, auth_required=False)
    yield gw
    await stop_gateway(gw)


async def test_without_gateway_auth_there_is_no_login(open_gateway: Gateway) -> None:
    base = str(open_gateway.http.base_url).rstrip("/")
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as browser:
        overview = await browser.get("/")
        assert overview.status_code == 200 and "Log out" not in overview.text
        login = await browser.get("/login")
        assert login.status_code == 303 and login.headers["location"] == "/"
