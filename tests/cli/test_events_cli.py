"""``agentbus events publish|tail|subscriptions`` against the session nats-server."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest
from nats.js.api import ConsumerConfig

from agentbus.bus import Bus
from agentbus.events import publish_event
from agentbus.names import Names
from agentbus.settings import BusSettings
from tests._harness.cli import invoke, on_bus

pytestmark = pytest.mark.nats


def test_publish_stores_the_event_once_per_id(bus_settings: BusSettings) -> None:
    on_bus(bus_settings, lambda bus: asyncio.sleep(0))  # the stream exists
    args = ("events", "publish", "review.done", '{"path": "a.py"}', "--key", "a.py")
    code, out, err = invoke(bus_settings, *args, "--id", "ev-7", "--json")
    assert code == 0, err
    first = msgspec.json.decode(out)
    assert first == {"topic": first["topic"], "seq": 1, "duplicate": False, "event_id": "ev-7"}
    code, out, err = invoke(bus_settings, *args, "--id", "ev-7")
    assert code == 0, err
    assert "seq 1 (duplicate" in out

    async def stored(bus: Bus) -> tuple[str, dict[str, str], object]:
        msg = await bus.js.get_msg(bus.names.topics_stream, 1)
        return msg.subject or "", dict(msg.headers or {}), msgspec.json.decode(msg.data or b"")

    subject, headers, payload = on_bus(bus_settings, stored)
    assert subject == Names(bus_settings.prefix).topic_subject("review.done", "a.py")
    assert headers["Agentbus-Event-Key"] == "a.py"
    assert headers["Agentbus-Source"] == "agentbus-cli"
    assert payload == {"path": "a.py"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Bad.Topic", "{}"), "[a-z0-9_-]"),
        (("a.b", "{nope"), "JSON is not valid JSON"),
        (("a.b", "{}", "--id", "has space"), "event id"),
        (("a.b", "{}", "--key", "a\nb"), "event key"),
    ],
)
def test_publish_refuses_bad_input_with_exit_2(
    bus_settings: BusSettings, args: tuple[str, ...], message: str
) -> None:
    code, _, err = invoke(bus_settings, "events", "publish", *args)
    assert code == 2
    assert message in err


def test_tail_since_prints_n_matching_events_and_exits(bus_settings: BusSettings) -> None:
    async def seed(bus: Bus) -> None:
        await publish_event(bus, "review.done", {"i": 1}, key="k")
        await publish_event(bus, "build.done", {"i": 2})
        await publish_event(bus, "review.started", {"i": 3})
        await publish_event(bus, "review.done", {"i": 4})

    on_bus(bus_settings, seed)
    code, out, err = invoke(bus_settings, "events", "tail", "review.>", "--since", "2", "-n", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["3", "4"]
    assert "review.started" in lines[0] and '{"i":3}' in lines[0]

    code, out, err = invoke(
        bus_settings, "events", "tail", "*.done", "--since", "1", "-n", "3", "--json"
    )
    assert code == 0, err
    events = [msgspec.json.decode(line) for line in out.splitlines()]
    assert [(e["seq"], e["topic"], e["key"]) for e in events] == [
        (1, "review.done", "k"),
        (2, "build.done", None),
        (4, "review.done", None),
    ]
    assert events[0]["payload"] == {"i": 1}
    assert events[0]["event_id"] and events[0]["source"] == ""


def test_tail_without_since_follows_new_events(bus_settings: BusSettings) -> None:
    on_bus(bus_settings, lambda bus: publish_event(bus, "review.done", {"old": True}))
    result: list[tuple[int, str, str]] = []
    tailer = threading.Thread(
        target=lambda: result.append(invoke(bus_settings, "events", "tail", "review.>", "-n", "1"))
    )
    tailer.start()

    async def publish_once_tailing(bus: Bus) -> None:
        deadline = time.monotonic() + 20
        while not (await bus.js.stream_info(bus.names.topics_stream)).state.consumer_count:
            assert time.monotonic() < deadline, "the tail never subscribed"
            await asyncio.sleep(0.05)
        await publish_event(bus, "review.done", {"new": True})

    on_bus(bus_settings, publish_once_tailing)
    tailer.join(20)
    assert not tailer.is_alive()
    code, out, err = result[0]
    assert code == 0, err
    (line,) = out.splitlines()  # the old event is not shown, and -n 1 stops after one
    assert '{"new":true}' in line


def test_tail_refuses_a_bad_pattern_or_since(bus_settings: BusSettings) -> None:
    code, _, err = invoke(bus_settings, "events", "tail", "review.>.x", "-n", "1")
    assert code == 2 and "topic pattern" in err
    code, _, err = invoke(bus_settings, "events", "tail", "review.>", "--since", "yesterday")
    assert code == 2 and "--since" in err


def test_subscriptions_lists_topic_consumers_by_deployment(bus_settings: BusSettings) -> None:
    async def seed(bus: Bus) -> None:
        n = bus.names
        kv = await bus.kv(n.deployments_bucket)
        await kv.put("review-team", b"{}")  # a name holding '-': split by the stored names
        consumers = {  # as a subscription of the events runtime names them
            "topic-review-team-on_review-_": "review.>",
            "topic-review-team-on_review-k3": "review.*.k3",
            "topic-audit-log_all": ">",
            "cap-echo": None,  # not a topic consumer
        }
        for name, filt in consumers.items():
            subject = f"{n.prefix}.topics.{filt}" if filt else None
            await bus.js.add_consumer(
                n.topics_stream,
                ConsumerConfig(name=name, durable_name=name, filter_subject=subject),
            )
        await publish_event(bus, "review.done", {})
        await publish_event(bus, "review.done", {})
        await publish_event(bus, "build.done", {})
        sub = await bus.js.pull_subscribe_bind("topic-audit-log_all", stream=n.topics_stream)
        await sub.fetch(1, timeout=5)  # delivered, not acked

    on_bus(bus_settings, seed)
    code, out, err = invoke(bus_settings, "events", "subscriptions", "--json")
    assert code == 0, err
    rows = [
        (
            r["deployment"],
            r["subscription"],
            r["part"],
            r["filters"],
            r["pending"],
            r["ack_pending"],
        )
        for r in msgspec.json.decode(out)
    ]
    assert rows == [
        ("audit", "log_all", None, [">"], 2, 1),
        ("review-team", "on_review", "_", ["review.>"], 2, 0),
        ("review-team", "on_review", "k3", ["review.*.k3"], 0, 0),
    ]
    code, out, err = invoke(bus_settings, "events", "subscriptions")
    assert code == 0, err
    assert "review-team" in out and "on_review" in out and "cap-echo" not in out
