"""Browser-facing guards: JSON bodies only, no cross-site requests, known Host only;
the body limit and 405s. Every refusal is the typed error body and is counted.

Gateway served by uvicorn on a free port, the real scheduler in-process, against the
session nats-server.
"""

from __future__ import annotations

import pytest

from agentbus.bus import Bus
from tests._harness.gateway import Gateway, start_gateway, stop_gateway

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]

TASK = b'{"capability": "echo"}'


def requests_counted(gateway: Gateway, method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return gateway.metric("agentbus_gateway_http_requests_total", labels)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_that_is_not_json_is_415(gateway: Gateway, content_type: str) -> None:
    r = await gateway.http.post("/v1/tasks", content=TASK, headers={"content-type": content_type})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert requests_counted(gateway, "POST", "/v1/tasks", 415) == 1
    r = await gateway.http.post(
        "/v1/tasks/t-1/cancel", content=b"a=b", headers={"content-type": content_type}
    )
    assert r.status_code == 415, r.text


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"]
)
async def test_json_content_types_are_accepted(gateway: Gateway, content_type: str) -> None:
    r = await gateway.http.post("/v1/tasks", content=TASK, headers={"content-type": content_type})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:3000"},
    ],
)
async def test_cross_site_requests_are_403(gateway: Gateway, headers: dict[str, str]) -> None:
    r = await gateway.http.post(
        "/v1/tasks", content=TASK, headers={"content-type": "application/json", **headers}
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert requests_counted(gateway, "POST", "/v1/tasks", 403) == 1
    r = await gateway.http.post("/v1/tasks/t-1/cancel", headers=headers)
    assert r.status_code == 403, r.text


async def test_same_origin_and_allowed_origins_pass(bus: Bus) -> None:
    gw = await start_gateway(bus, allowed_origins=["https://ui.example"])
    try:
        own = str(gw.http.base_url).rstrip("/")
        for headers in [
            {"origin": own, "sec-fetch-site": "same-origin"},
            {"origin": "https://ui.example", "sec-fetch-site": "cross-site"},
            {"sec-fetch-site": "none"},
        ]:
            r = await gw.http.post("/v1/tasks", json={"capability": "echo"}, headers=headers)
            assert r.status_code == 201, (headers, r.text)
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.2"])
async def test_unknown_host_is_refused(gateway: Gateway, host: str) -> None:
    r = await gateway.http.get("/v1/tasks/t-1", headers={"host": host})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"
    assert r.json()["error"]["field"] == "Host"


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8080", "localhost:8080", "localhost", "gateway:8080", "[::1]:8080"]
)
async def test_default_hosts_pass(gateway: Gateway, host: str) -> None:
    r = await gateway.http.get("/v1/tasks/t-1", headers={"host": host})
    assert r.status_code == 404, r.text


async def test_configured_hosts_replace_the_defaults(bus: Bus) -> None:
    gw = await start_gateway(bus, allowed_hosts=["api.example", "127.0.0.1"])
    try:
        assert (
            await gw.http.get("/v1/tasks/t-1", headers={"host": "api.example"})
        ).status_code == 404
        assert (
            await gw.http.get("/v1/tasks/t-1", headers={"host": "localhost"})
        ).status_code == 400
    finally:
        await stop_gateway(gw)


async def test_body_over_the_limit_is_413(bus: Bus) -> None:
    gw = await start_gateway(bus, max_body_bytes=1024)
    try:
        body = b'{"capability": "echo", "input": "' + b"x" * 2000 + b'"}'
        r = await gw.http.post(
            "/v1/tasks", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "too_large"
        assert "1024" in r.json()["error"]["message"]
        assert requests_counted(gw, "POST", "/v1/tasks", 413) == 1
    finally:
        await stop_gateway(gw)


async def test_405_carries_allow(gateway: Gateway) -> None:
    r = await gateway.http.delete("/v1/tasks")
    assert r.status_code == 405, r.text
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
