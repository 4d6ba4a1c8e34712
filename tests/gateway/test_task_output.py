"""GET /v1/tasks/{id}/output: a task's output as JSON bytes, streamed from the Object
Store when it was too large to travel inline (over ``inline_max_bytes``, 64 KiB).

Gateway served by uvicorn on a free port, the real scheduler in-process, a real agent
on its own connection, against the session nats-server.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.bus.blobs import put_blob
from agentbus.messages import BlobRef
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, quick_settings
from tests._harness.gateway import Gateway

pytestmark = [pytest.mark.nats, pytest.mark.usefixtures("scheduler")]


def maker(agent_id: str) -> Agent:
    """An agent whose ``make`` handler returns ``{"data": "x" * n}`` for input ``n``."""
    agent = Agent("maker", settings=quick_settings(agent_id))

    @agent.handler("make")
    async def make(ctx: TaskContext, size: int) -> Any:
        return {"data": "x" * size}

    return agent


async def run_task(gateway: Gateway, size: int) -> dict[str, Any]:
    r = await gateway.http.post("/v1/tasks", json={"capability": "make", "input": size})
    assert r.status_code == 201, r.text
    r = await gateway.http.get(f"/v1/tasks/{r.json()['task_id']}", params={"wait_s": 30})
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    assert view["status"] == "succeeded", view
    return view


@pytest.mark.timeout(90)
async def test_large_output_is_streamed_from_the_object_store(
    gateway: Gateway, bus: Bus, bus_settings: BusSettings
) -> None:
    size = 300 * 1024  # over the 64 KiB inline limit, and over two 128 KiB chunks
    async with agent_running(maker("gw-maker-1"), bus_settings):
        view = await run_task(gateway, size)
    task_id = view["task_id"]
    assert view["output"] is None and view["output_ref"] is not None
    assert view["output_url"] == f"/v1/tasks/{task_id}/output"

    async with gateway.http.stream("GET", view["output_url"]) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert int(r.headers["content-length"]) == view["output_ref"]["size_bytes"]
        pieces = [piece async for piece in r.aiter_raw()]
    body = b"".join(pieces)
    assert hashlib.sha256(body).hexdigest() == view["output_ref"]["sha256"]
    assert msgspec.json.decode(body) == {"data": "x" * size}

    # a blob that no longer matches its digest: the stream is cut, never completed
    ref = msgspec.convert(view["output_ref"], BlobRef)
    await put_blob(bus, ref.name, b'"' + b"y" * (ref.size_bytes - 2) + b'"', bucket=ref.bucket)
    with pytest.raises(httpx.RemoteProtocolError):
        r = await gateway.http.get(view["output_url"])


@pytest.mark.timeout(60)
async def test_inline_output_is_served_and_missing_output_is_404(
    gateway: Gateway, bus_settings: BusSettings
) -> None:
    async with agent_running(maker("gw-maker-2"), bus_settings):
        view = await run_task(gateway, 10)
    assert view["output"] == {"data": "x" * 10}
    r = await gateway.http.get(view["output_url"])
    assert r.status_code == 200, r.text
    assert r.json() == {"data": "x" * 10}

    r = await gateway.http.post("/v1/tasks", json={"capability": "nobody-has-this"})
    queued = r.json()
    assert queued["output_url"] is None
    r = await gateway.http.get(f"/v1/tasks/{queued['task_id']}/output")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert "queued" in r.json()["error"]["message"]
    r = await gateway.http.get("/v1/tasks/no-such-task/output")
    assert r.status_code == 404
