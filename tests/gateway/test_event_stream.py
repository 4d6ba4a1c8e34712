"""``GET /v1/events`` and ``GET /v1/tasks/{id}/events``: the events stream over SSE.

The gateway runs in-process (uvicorn on a free port) against the session
nats-server; events are published straight onto ``<P>_EVENTS`` and read back over
HTTP with ``httpx-sse``.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import msgspec
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from agentbus.auth.tokens import SCOPES, create_token
from agentbus.bus import Bus
from agentbus.messages import AgentEvent, ReplicaEvent, utcnow
from tests._harness.gateway import Gateway, bearer, start_gateway, stop_gateway
from tests._harness.polling import eventually
from tests._harness.sse import count, publish_raw, publish_task_event, read_sse, up_to

pytestmark = pytest.mark.nats


async def _stream_seqs(bus: Bus) -> list[int]:
    info = await bus.js.stream_info(bus.names.events_stream)
    return list(range(info.state.first_seq, info.state.last_seq + 1))


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(
    bus: Bus, gateway: Gateway
) -> None:
    for i in range(10):
        await publish_task_event(bus, f"t{i}", "queued")
    first = await read_sse(gateway.http, "/v1/events", params={"since": "0"}, until=count(4))
    last_id = first[-1].id
    for i in range(10, 15):  # published while the client is away
        await publish_task_event(bus, f"t{i}", "queued")
    rest = await read_sse(
        gateway.http, "/v1/events", headers={"Last-Event-ID": last_id}, until=up_to(15)
    )
    ids = [int(e.id) for e in first + rest]
    assert ids == await _stream_seqs(bus) == list(range(1, 16))
    assert {e.event for e in first + rest} == {"task.queued"}
    data = msgspec.json.decode(rest[0].data)
    assert data["type"] == "TaskEvent" and data["task_id"] == "t4"
    # Last-Event-ID wins over since (a browser reconnects with the original URL).
    again = await read_sse(
        gateway.http,
        "/v1/events",
        params={"since": "0"},
        headers={"Last-Event-ID": "13"},
        until=up_to(15),
    )
    assert [int(e.id) for e in again] == [14, 15]


async def test_without_a_start_only_new_events_come(bus: Bus, gateway: Gateway) -> None:
    await publish_task_event(bus, "old", "queued")
    got: list[str] = []

    async def follow() -> None:
        events = await read_sse(gateway.http, "/v1/events", until=count(1))
        got.extend(msgspec.json.decode(e.data)["task_id"] for e in events)

    reader = asyncio.create_task(follow())
    await eventually(lambda: gateway.metric("agentbus_gateway_sse_streams") == 1)
    await publish_task_event(bus, "new", "queued")
    await asyncio.wait_for(reader, 15)
    assert got == ["new"]


async def _mixed_events(bus: Bus) -> dict[str, int]:
    """One of each kind of event, by a label; their stream sequences."""
    at = utcnow()
    seqs = {
        "a1-queued": await publish_task_event(bus, "a1", "queued", capability="summarize"),
        "a1-running": await publish_task_event(
            bus, "a1", "running", capability="summarize", agent_id="ag-1"
        ),
        "b2-running": await publish_task_event(
            bus, "b2", "running", capability="echo", agent_id="ag-2"
        ),
        "joined": await publish_raw(
            bus, "agent", "joined", AgentEvent(agent_id="ag-1", kind="joined", at=at)
        ),
        "replica": await publish_raw(
            bus,
            "replica",
            "started",
            ReplicaEvent(
                node_id="n1", deployment="web", replica=0, kind="started", at=at, agent_id="ag-3"
            ),
        ),
        "agent-error": await publish_raw(
            bus,
            "error",
            "agent.ag-1",
            {"type": "ErrorEvent", "service": "agent:ag-1", "subject": "x", "reason": "bad"},
        ),
        "a1-succeeded": await publish_task_event(
            bus, "a1", "succeeded", capability="summarize", agent_id="ag-1"
        ),
    }
    return seqs


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"kind": "task"}, ["a1-queued", "a1-running", "b2-running", "a1-succeeded"]),
        ({"kind": "task.running"}, ["a1-running", "b2-running"]),
        ({"kind": ["agent", "replica.started"]}, ["joined", "replica"]),
        ({"kind": "*.joined"}, ["joined"]),
        ({"kind": "error.agent"}, ["agent-error"]),
        ({"task_id": "a1"}, ["a1-queued", "a1-running", "a1-succeeded"]),
        ({"task_id": "a1", "kind": "task.running"}, ["a1-running"]),
        ({"capability": "echo"}, ["b2-running"]),
        ({"agent": "ag-1"}, ["a1-running", "joined", "agent-error", "a1-succeeded"]),
        ({"deployment": "web"}, ["replica"]),
        ({"kind": "task", "agent": "ag-2"}, ["b2-running"]),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
async def test_each_filter_selects_its_events(
    bus: Bus, gateway: Gateway, params: dict[str, str | list[str]], expected: list[str]
) -> None:
    seqs = await _mixed_events(bus)
    last = seqs[expected[-1]]
    events = await read_sse(
        gateway.http, "/v1/events", params={**params, "since": "0"}, until=up_to(last)
    )
    assert [int(e.id) for e in events] == [seqs[label] for label in expected]
    kinds = {"joined": "agent.joined", "replica": "replica.started", "agent-error": "error.agent"}
    for label, event in zip(expected, events, strict=True):
        assert event.event == kinds.get(label) or event.event == f"task.{label.split('-')[1]}"


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"kind": ["task", "task.failed"]}, {}, "overlap"),
        ({"kind": "Task"}, {}, "kind"),
        ({"kind": "a.b.c"}, {}, "kind"),
        ({"task_id": "a1", "kind": "agent"}, {}, "task kind"),
        ({"task_id": "a b"}, {}, "task id"),
        ({"since": "yesterday"}, {}, "since"),
        ({}, {"Last-Event-ID": "x1"}, "Last-Event-ID"),
    ],
)
async def test_bad_filters_are_400(
    gateway: Gateway, params: dict[str, str | list[str]], headers: dict[str, str], field: str
) -> None:
    r = await gateway.http.get("/v1/events", params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


async def test_without_a_token_401_and_without_the_scope_403(bus: Bus, gateway: Gateway) -> None:
    async with gateway.client() as http:
        assert (await http.get("/v1/events")).status_code == 401
        assert (await http.get("/v1/tasks/t1/events")).status_code == 401
    _, other = await create_token(
        bus, "other", [s for s in SCOPES if s not in ("events:read", "admin")]
    )
    async with gateway.client(other) as http:
        r = await http.get("/v1/events")
        assert r.status_code == 403, r.text
        assert 'scope="events:read"' in r.headers["www-authenticate"]
        assert (await http.get("/v1/tasks/t1/events")).status_code == 403
    _, reader = await create_token(bus, "reader", ["events:read"])
    await publish_task_event(bus, "t1", "queued")
    async with gateway.client(reader) as http:
        events = await read_sse(http, "/v1/events", params={"since": "0"}, until=count(1))
    assert events[0].id == "1"


def _small_window_client(gw: Gateway) -> httpx.AsyncClient:
    """A client whose socket takes at most about 256 KiB ahead of its reader."""
    small_window = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)]
    )
    return httpx.AsyncClient(
        base_url=gw.http.base_url, transport=small_window, headers=bearer(gw.secret)
    )


async def test_a_client_that_reads_nothing_is_cut_off_with_the_reason(bus: Bus) -> None:
    gw = await start_gateway(bus, sse_send_timeout_s=1.0, sse_final_grace_s=20.0, sse_batch=2)
    pad = "x" * 256 * 1024
    total = 60  # 15 MiB: more than the kernel's socket buffers and uvicorn's hold
    try:
        async with _small_window_client(gw) as http:
            async with aconnect_sse(http, "GET", "/v1/events", params={"since": "0"}) as source:
                assert source.response.status_code == 200
                for i in range(total):  # nobody reads while these go out
                    await publish_raw(bus, "test", "big", {"i": i, "pad": pad})
                cutoffs = {"reason": "send_timeout"}
                await eventually(
                    lambda: gw.metric("agentbus_gateway_sse_cutoffs_total", cutoffs) == 1,
                    what="the slow client cut off",
                )
                events = [e async for e in source.aiter_sse() if e.id or e.event == "error"]
        assert events[-1].event == "error"
        assert events[-1].data.startswith("slow consumer: resume with Last-Event-ID")
        got = [int(e.id) for e in events[:-1]]
        assert got == list(range(1, len(got) + 1)) and len(got) < total
        rest = await read_sse(
            gw.http, "/v1/events", headers={"Last-Event-ID": str(got[-1])}, until=up_to(total)
        )
        assert [int(e.id) for e in rest] == list(range(got[-1] + 1, total + 1))
        await eventually(lambda: gw.metric("agentbus_gateway_sse_streams") == 0)
    finally:
        await stop_gateway(gw)


async def test_a_client_lagging_too_long_is_cut_off(bus: Bus) -> None:
    gw = await start_gateway(bus, sse_max_lag_events=3, sse_max_lag_s=0.3, sse_batch=1)
    pad = "x" * 256 * 1024
    try:
        for i in range(40):  # 10 MiB: the socket buffers fill, sends wait for the reader
            await publish_raw(bus, "test", "big", {"i": i, "pad": pad})
        events = []
        async with (
            _small_window_client(gw) as http,
            aconnect_sse(http, "GET", "/v1/events", params={"since": "0"}) as source,
        ):
            async for sse in source.aiter_sse():
                if sse.id or sse.event == "error":
                    events.append(sse)
                    await asyncio.sleep(0.02)  # a reader slower than the stream
        assert events[-1].event == "error"
        assert "slow consumer" in events[-1].data and "behind" in events[-1].data
        got = [int(e.id) for e in events[:-1]]
        assert got == list(range(1, len(got) + 1)) and len(got) < 40
        assert gw.metric("agentbus_gateway_sse_cutoffs_total", {"reason": "lagging"}) == 1
    finally:
        await stop_gateway(gw)


async def test_streams_over_the_token_cap_get_429(bus: Bus) -> None:
    gw = await start_gateway(bus, sse_max_streams_per_token=1, sse_max_streams=2)
    try:
        async with aconnect_sse(gw.http, "GET", "/v1/events") as first:
            assert first.response.status_code == 200
            r = await gw.http.get("/v1/events")
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1"
            _, other = await create_token(bus, "other", ["events:read"])
            async with gw.client(other) as http, aconnect_sse(http, "GET", "/v1/events") as two:
                assert two.response.status_code == 200
                _, third = await create_token(bus, "third", ["events:read"])
                async with gw.client(third) as http3:
                    assert (await http3.get("/v1/events")).status_code == 503
        labels = {"limit": "token"}
        assert gw.metric("agentbus_gateway_sse_refusals_total", labels) == 1
        await eventually(lambda: gw.metric("agentbus_gateway_sse_streams") == 0)
    finally:
        await stop_gateway(gw)


async def test_keep_alive_comments_come_while_nothing_happens(bus: Bus) -> None:
    gw = await start_gateway(bus, sse_keepalive_s=0.2)
    try:
        async with asyncio.timeout(10), gw.http.stream("GET", "/v1/events") as r:
            text = ""
            async for chunk in r.aiter_text():
                text += chunk
                if text.count(": keep-alive") >= 2:
                    break
        assert text.startswith(": stream open")
        assert "retry: 2000" in text
    finally:
        await stop_gateway(gw)


async def test_a_stopping_gateway_ends_streams_with_an_error_event(bus: Bus) -> None:
    gw = await start_gateway(bus)
    events = []

    async def follow() -> None:
        async with aconnect_sse(gw.http, "GET", "/v1/events") as source:
            events.extend([e async for e in source.aiter_sse() if e.event == "error"])

    reader = asyncio.create_task(follow())
    await eventually(lambda: gw.metric("agentbus_gateway_sse_streams") == 1)
    await stop_gateway(gw)
    await asyncio.wait_for(reader, 10)
    assert [e.data for e in events] == ["gateway stopping: resume with Last-Event-ID"]


async def test_task_events_show_history_then_live_until_terminal(
    bus: Bus, gateway: Gateway, scheduler: None
) -> None:
    r = await gateway.http.post("/v1/tasks", json={"capability": "nobody", "input": 1})
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    await publish_task_event(bus, "other", "queued")  # another task's: not shown
    events: list[ServerSentEvent] = []

    async def follow() -> None:
        async with aconnect_sse(gateway.http, "GET", f"/v1/tasks/{task_id}/events") as source:
            async for sse in source.aiter_sse():  # ends by itself after the terminal event
                if sse.id:
                    events.append(sse)

    reader = asyncio.create_task(follow())
    await eventually(lambda: [e.event for e in events] == ["task.queued"], what="the history")
    cancelled = await gateway.http.post(f"/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await asyncio.wait_for(reader, 15)
    assert [e.event for e in events] == ["task.queued", "task.cancelled"]
    assert {msgspec.json.decode(e.data)["task_id"] for e in events} == {task_id}
    # Reconnecting after the terminal event: nothing more, and 204 stops a browser.
    done = await gateway.http.get(
        f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": events[-1].id}
    )
    assert done.status_code == 204
    # From the start again: the whole history, then the end.
    again = await read_sse(gateway.http, f"/v1/tasks/{task_id}/events", until=lambda _: False)
    assert [e.id for e in again] == [e.id for e in events]
    assert (await gateway.http.get("/v1/tasks/nosuch/events")).status_code == 404


async def test_a_stream_ends_after_its_time_limit(bus: Bus) -> None:
    gw = await start_gateway(bus, sse_max_duration_s=0.5)
    try:
        events = await read_sse(gw.http, "/v1/events", until=lambda _: False)
        assert [e.event for e in events] == ["error"]
        assert events[0].data == "stream time limit: resume with Last-Event-ID"
        assert gw.metric("agentbus_gateway_sse_cutoffs_total", {"reason": "duration"}) == 1
    finally:
        await stop_gateway(gw)
