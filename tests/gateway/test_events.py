"""``POST /v1/events/{topic}``: an outside caller publishes an agent event.

Gateway served by uvicorn on a free port against the session nats-server; the event
is read back from the ``<P>_TOPICS`` stream.
"""

from __future__ import annotations

import msgspec
import pytest

from agentbus.bus import Bus
from tests._harness.gateway import Gateway

pytestmark = pytest.mark.nats


async def test_an_event_is_stored_with_its_headers(bus: Bus, gateway: Gateway) -> None:
    r = await gateway.http.post(
        "/v1/events/review.file_reviewed",
        params={"key": "src/a.py"},
        json={"path": "src/a.py", "issues": 2},
        headers={"Idempotency-Key": "ev-1"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {"seq": body["seq"], "event_id": "ev-1", "duplicate": False}
    msg = await bus.js.get_msg(bus.names.topics_stream, body["seq"])
    assert msg.subject == bus.names.topic_subject("review.file_reviewed", "src/a.py")
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == "ev-1"
    assert msg.headers["Agentbus-Event-Key"] == "src/a.py"
    assert msg.headers["Agentbus-Source"] == "gateway"
    assert "Agentbus-Event-Type" in msg.headers
    assert msgspec.json.decode(msg.data or b"") == {"path": "src/a.py", "issues": 2}


async def test_a_repeated_idempotency_key_stores_the_event_once(bus: Bus, gateway: Gateway) -> None:
    def post() -> object:
        return gateway.http.post(
            "/v1/events/review.done", json=[1, 2], headers={"Idempotency-Key": "again-1"}
        )

    first, again = await post(), await post()  # type: ignore[misc]
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "duplicate": True}
    info = await bus.js.stream_info(bus.names.topics_stream)
    assert info.state.messages == 1


async def test_without_idempotency_key_each_post_is_an_event(bus: Bus, gateway: Gateway) -> None:
    ids = set()
    for _ in range(2):
        r = await gateway.http.post(
            "/v1/events/ticks", content=b"null", headers={"content-type": "application/json"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["duplicate"] is False
        ids.add(r.json()["event_id"])
    assert len(ids) == 2
    msg = await bus.js.get_msg(bus.names.topics_stream, 1)
    assert msg.subject == bus.names.topic_subject("ticks")
    assert msg.headers is not None and "Agentbus-Event-Key" not in msg.headers


@pytest.mark.parametrize("topic", ["Review.Done", "a..b", "a.b.c.d.e.f.g.h.i", "a.*"])
async def test_a_bad_topic_is_400_with_the_rule(gateway: Gateway, topic: str) -> None:
    r = await gateway.http.post(f"/v1/events/{topic}", json={})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request"
    assert "[a-z0-9_-]" in error["message"]
    labels = {"service": "gateway", "source": "/v1/events/{topic}"}
    assert gateway.metric("agentbus_bad_messages_total", labels) >= 1


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({}, {"Idempotency-Key": "no spaces"}, "Idempotency-Key"),
        ({"key": ""}, {}, "key"),
        ({"key": "a\nb"}, {}, "key"),
    ],
)
async def test_a_bad_event_id_or_key_is_400(
    gateway: Gateway, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    r = await gateway.http.post("/v1/events/review.done", json={}, params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field


async def test_the_request_guards_apply(gateway: Gateway) -> None:
    r = await gateway.http.post(
        "/v1/events/review.done", content=b"a=b", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415, r.text
    r = await gateway.http.post(
        "/v1/events/review.done", json={}, headers={"origin": "https://evil.example"}
    )
    assert r.status_code == 403, r.text
    r = await gateway.http.post(
        "/v1/events/review.done", content=b"{no", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    r = await gateway.http.post("/v1/events/review.done")  # no body: no event
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "body"
