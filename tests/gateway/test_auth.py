"""Bearer tokens at the gateway: 401, 403 per scope, revoke, expiry, 429, no secret logged.

A real gateway (uvicorn) and scheduler against the session nats-server; tokens are made
with ``agentbus.auth.tokens`` as an operator would.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.auth.tokens import SCOPES, create_token, revoke_token
from agentbus.bus import Bus
from agentbus.messages import ListNodes, NodesReply
from agentbus_gateway.approvals import APPROVAL_ROUTES
from agentbus_gateway.auth import SCOPE_OPT
from agentbus_gateway.event_stream import EVENT_ROUTES
from agentbus_gateway.events import publish_topic_event
from agentbus_gateway.output import task_output
from agentbus_gateway.routes import ROUTES
from agentbus_registry.service import serve as serve_registry
from agentbus_registry.settings import RegistrySettings
from tests._harness.gateway import Gateway, bearer, start_gateway, stop_gateway
from tests._harness.polling import answers, eventually
from tests._harness.services import serving

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]

REFUSALS = "agentbus_gateway_auth_refusals_total"
PROTOCOL = Path(__file__).resolve().parents[2] / "docs/protocol.md"
PUBLIC = {("GET", "/healthz"), ("GET", "/openapi.json")}


def refusals(gw: Gateway, status: int, reason: str) -> float:
    return gw.metric(REFUSALS, {"status": str(status), "reason": reason})


def assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith('Bearer realm="agentbus"')
    assert r.json()["error"]["code"] == "unauthorized"


async def until_refused(http: httpx.AsyncClient, timeout_s: float) -> httpx.Response:
    async def refused() -> httpx.Response | None:
        r = await http.get("/v1/tasks")
        return r if r.status_code == 401 else None

    return await eventually(refused, timeout_s=timeout_s, what="a 401")


async def test_a_request_without_a_valid_token_is_401(gateway: Gateway) -> None:
    token_id = gateway.token.token_id
    cases = [
        (None, "missing"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer garbage", "malformed"),
        ("Bearer abt_nothex000000_secret", "malformed"),
        (f"Bearer abt_{'0' * 12}_{'y' * 43}", "unknown"),
        (f"Bearer abt_{token_id}_{'x' * 43}", "unknown"),  # a known id, a wrong secret
    ]
    for header, reason in cases:
        before = refusals(gateway, 401, reason)
        async with gateway.client() as http:
            r = await http.get("/v1/tasks", headers={"Authorization": header} if header else {})
        assert_401(r)
        challenge = r.headers["www-authenticate"]
        assert ("invalid_token" in challenge) == (reason != "missing"), (header, challenge)
        assert refusals(gateway, 401, reason) == before + 1, (header, reason)
    assert gateway.metric(
        "agentbus_gateway_http_requests_total",
        {"method": "GET", "route": "/v1/tasks", "status": "401"},
    ) == len(cases)
    assert (await gateway.http.get("/v1/tasks")).status_code == 200  # the right token


async def test_a_revoked_token_is_refused_within_about_a_second(gateway: Gateway, bus: Bus) -> None:
    token, secret = await create_token(bus, "soon-revoked", ["tasks:read"])
    async with gateway.client(secret) as http:
        for _ in range(3):
            assert (await http.get("/v1/tasks")).status_code == 200
        await revoke_token(bus, token.token_id)
        r = await until_refused(http, timeout_s=1.5)  # the KV watch applies it
    assert "revoked" in r.json()["error"]["message"]
    assert refusals(gateway, 401, "revoked") >= 1
    assert (await gateway.http.get("/v1/tasks")).status_code == 200  # others still work


async def test_an_expired_token_is_refused(gateway: Gateway, bus: Bus) -> None:
    _, secret = await create_token(bus, "short-lived", ["tasks:read"], expires_s=1.0)
    async with gateway.client(secret) as http:
        r = await until_refused(http, timeout_s=10)
    assert_401(r)
    assert "expired" in r.json()["error"]["message"]
    assert refusals(gateway, 401, "expired") == 1


async def test_open_routes_need_no_token(gateway: Gateway) -> None:
    async with gateway.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        doc = (await http.get("/openapi.json")).json()
        assert (await http.get("/schema/openapi.json")).status_code == 200
        assert (await http.get("/metrics")).status_code == 401
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    create = doc["paths"]["/v1/tasks"]["post"]
    assert create["security"] == [{"bearer": []}]
    assert create["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert create["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert "403" in create["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]


def scoped_routes() -> dict[tuple[str, str], str | None]:
    """(method, path) -> scope of every route the gateway serves (None: open)."""
    found: dict[tuple[str, str], str | None] = {}
    for handler in [*ROUTES, task_output, publish_topic_event, *EVENT_ROUTES, *APPROVAL_ROUTES]:
        for path in handler.paths:
            for method in handler.http_methods:
                key = (str(method), re.sub(r":\w+}", "}", path))
                found[key] = handler.opt.get(SCOPE_OPT)
    return found


def test_every_route_but_health_and_openapi_needs_a_scope_as_documented() -> None:
    routes = scoped_routes()
    assert {k for k, scope in routes.items() if scope is None} == PUBLIC
    rows = re.findall(r"^\| `(GET|POST) (/\S+)` \| (`[a-z:]+`|none) \|", PROTOCOL.read_text(), re.M)
    documented = {(m, p): None if s == "none" else s.strip("`") for m, p, s in rows}
    assert documented == routes


async def _task(gw: Gateway) -> str:
    r = await gw.http.post("/v1/tasks", json={"capability": "nobody", "input": 1})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


CASES = [  # method, path ({id}: a queued task), body, scope, status with the scope
    ("POST", "/v1/tasks", {"capability": "echo", "input": 1}, "tasks:submit", 201),
    ("GET", "/v1/tasks/{id}", None, "tasks:read", 200),
    ("GET", "/v1/tasks?status=queued", None, "tasks:read", 200),
    ("GET", "/v1/tasks/{id}/output", None, "tasks:read", 404),  # queued: no output yet
    ("POST", "/v1/tasks/wait", {"task_ids": ["{id}"], "wait_s": 0}, "tasks:read", 200),
    ("POST", "/v1/tasks/{id}/cancel", None, "tasks:cancel", 200),
    ("POST", "/v1/tasks/{id}/resubmit", {}, "tasks:cancel", 409),  # not ended
    ("POST", "/v1/events/review.done", {"path": "a.py"}, "events:publish", 201),
    ("GET", "/v1/agents", None, "fleet:read", 200),
    ("GET", "/v1/nodes", None, "fleet:read", 200),
    ("GET", "/metrics", None, "metrics:read", 200),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "scope", "status"),
    CASES,
    ids=[f"{c[0]} {c[1]}" for c in CASES],
)
async def test_a_token_without_the_scope_is_403_and_with_it_passes(
    gateway: Gateway,
    bus: Bus,
    method: str,
    path: str,
    body: object,
    scope: str,
    status: int,
) -> None:
    task_id = await _task(gateway)
    path = path.replace("{id}", task_id)
    if isinstance(body, dict) and body.get("task_ids"):
        body = {**body, "task_ids": [task_id]}
    others = [s for s in SCOPES if s not in (scope, "admin")]
    _, without = await create_token(bus, "without", others)
    _, only = await create_token(bus, "only", [scope])
    async with gateway.client(without) as http:
        r = await http.request(method, path, json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert scope in r.json()["error"]["message"]
    assert f'scope="{scope}"' in r.headers["www-authenticate"]
    assert refusals(gateway, 403, "scope") == 1
    async with AsyncExitStack() as stack:
        if scope == "fleet:read":  # the registry answers these
            nodes = bus.names.endpoint("registry", "nodes")
            await stack.enter_async_context(
                serving(
                    lambda stop: serve_registry(bus, stop, RegistrySettings(), CollectorRegistry()),
                    lambda: answers(lambda: bus.request(nodes, ListNodes(), NodesReply)),
                    what="registry",
                )
            )
        async with gateway.client(only) as http:
            r = await http.request(method, path, json=body)
    assert r.status_code == status, r.text


async def test_admin_has_every_scope(gateway: Gateway, bus: Bus) -> None:
    _, admin = await create_token(bus, "root", ["admin"])
    async with gateway.client(admin) as http:
        assert (await http.post("/v1/tasks", json={"capability": "echo"})).status_code == 201
        assert (await http.get("/v1/tasks")).status_code == 200
        assert (await http.post("/v1/events/a.b", json=1)).status_code == 201
        assert (await http.get("/metrics")).status_code == 200


async def test_over_the_rate_limit_is_429_with_retry_after(bus: Bus) -> None:
    gw = await start_gateway(bus, rate_limit_requests=3, rate_limit_window_s=30)
    try:
        _, other = await create_token(bus, "other", ["tasks:read"])
        for _ in range(3):
            assert (await gw.http.get("/v1/tasks")).status_code == 200
        r = await gw.http.get("/v1/tasks")
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert refusals(gw, 429, "rate") == 1
        assert (await gw.http.get("/healthz")).status_code == 200  # open routes: no limit
        async with gw.client(other) as http:  # the limit is per token
            assert (await http.get("/v1/tasks")).status_code == 200
    finally:
        await stop_gateway(gw)


async def test_auth_can_be_turned_off(bus: Bus) -> None:
    gw = await start_gateway(bus, auth_required=False)
    try:
        async with gw.client() as http:
            assert (await http.get("/v1/tasks")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
    finally:
        await stop_gateway(gw)


async def test_the_secret_never_appears_in_the_logs(bus: Bus) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", serialize=True)
    gw = await start_gateway(bus, rate_limit_requests=4, rate_limit_window_s=30)
    try:
        secret = gw.secret.split("_", 2)[2]
        _, limited = await create_token(bus, "limited", ["fleet:read"])
        async with gw.client() as http:
            for headers in (
                bearer(gw.secret),
                bearer(limited),
                bearer(gw.secret + "x"),  # a wrong secret
                {"Authorization": gw.secret},  # no scheme
                {"Authorization": f"Bearer abt_{secret}"},  # malformed
                bearer(f"abt_{'0' * 12}_{secret}"),  # unknown id
            ):
                await http.post("/v1/tasks", json={"capability": "Bad Cap"}, headers=headers)
            for _ in range(5):  # over the limit: 429
                await http.get("/v1/tasks", headers=bearer(gw.secret))
        await revoke_token(bus, gw.token.token_id)
        async with gw.client(gw.secret) as http:
            await until_refused(http, timeout_s=5)
    finally:
        await stop_gateway(gw)
        logger.remove(sink)
    text = "\n".join(lines)
    assert gw.token.token_id in text  # refusals are logged, by token id
    for status in ("401", "403", "429"):
        assert f'"status": {status}' in text, status
    assert secret not in text
