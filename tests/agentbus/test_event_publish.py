"""The publish side of agent events (``agentbus.events.publish_event``) per the contract:
topic rule, partition subjects, headers, idempotent ids, the ``<P>_TOPICS`` stream.
"""

from __future__ import annotations

import msgspec
import pytest
from nats.js.api import RetentionPolicy

from agentbus.bus import Bus
from agentbus.errors import ContractError
from agentbus.events import publish_event
from agentbus.names import (
    TOPIC_PARTITIONS,
    Names,
    check_topic,
    check_topic_pattern,
    fnv1a_32,
)


class Reviewed(msgspec.Struct):
    path: str
    issues: int


def test_fnv1a_32_matches_the_reference_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968
    assert TOPIC_PARTITIONS == 8


@pytest.mark.parametrize(
    "topic", ["review", "review.file_reviewed", "a-b.c_d.0", "a.b.c.d.e.f.g.h"]
)
def test_good_topics(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize(
    "topic", ["", "Review", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a.b.c.d.e.f.g.h.i", "é"]
)
def test_bad_topics_are_refused_with_the_rule(topic: str) -> None:
    with pytest.raises(ContractError, match=r"1-8 dot-separated tokens of \[a-z0-9_-\]"):
        check_topic(topic)


def test_patterns_and_their_filters() -> None:
    n = Names("p")
    for pattern in ("review.>", "*.done", ">", "review"):
        check_topic_pattern(pattern)
    for bad in ("review.>.x", "a..b", "A", "a.b.c.d.e.f.g.h.i", "a*"):
        with pytest.raises(ContractError):
            check_topic_pattern(bad)
    assert n.topic_filter("review.>") == "p.topics.review.>"
    assert n.topic_filter("review.*") == "p.topics.review.*.*"
    assert n.topic_subject("review.done") == "p.topics.review.done._"
    assert n.topic_subject("review.done", "foobar") == f"p.topics.review.done.k{0xBF9CF968 % 8}"


@pytest.mark.nats
async def test_an_event_is_stored_with_the_contract_headers(bus: Bus) -> None:
    n = bus.names
    info = await bus.js.stream_info(n.topics_stream)
    assert info.config.retention == RetentionPolicy.LIMITS
    assert info.config.subjects == [n.topic_filter(">")]
    assert info.config.duplicate_window == pytest.approx(120.0)
    assert info.config.max_age == pytest.approx(bus.settings.topics_max_age_s)

    sent = await publish_event(
        bus, "review.file_reviewed", Reviewed("a.py", 2), key="a.py", source="rev-0"
    )
    assert not sent.duplicate
    msg = await bus.js.get_msg(n.topics_stream, sent.seq)
    assert msg.subject == n.topic_subject("review.file_reviewed", "a.py")
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == sent.event_id
    assert msg.headers["Agentbus-Event-Type"] == "Reviewed"
    assert msg.headers["Agentbus-Event-Key"] == "a.py"
    assert msg.headers["Agentbus-Source"] == "rev-0"
    assert msgspec.json.decode(msg.data or b"") == {"path": "a.py", "issues": 2}

    plain = await publish_event(bus, "review.started", {"n": 1})
    msg = await bus.js.get_msg(n.topics_stream, plain.seq)
    assert msg.subject == n.topic_subject("review.started")
    assert msg.headers is not None and "Agentbus-Event-Key" not in msg.headers


@pytest.mark.nats
async def test_a_repeated_event_id_is_stored_once(bus: Bus) -> None:
    first = await publish_event(bus, "review.done", {"n": 1}, event_id="ev-1")
    again = await publish_event(bus, "review.done", {"n": 1}, event_id="ev-1")
    assert (again.seq, again.duplicate, again.event_id) == (first.seq, True, "ev-1")
    info = await bus.js.stream_info(bus.names.topics_stream)
    assert info.state.messages == 1


@pytest.mark.nats
async def test_bad_input_is_a_contract_error(bus: Bus) -> None:
    with pytest.raises(ContractError, match="topic"):
        await publish_event(bus, "Bad Topic", {})
    with pytest.raises(ContractError, match="event id"):
        await publish_event(bus, "a", {}, event_id="no spaces")
    with pytest.raises(ContractError, match="key"):
        await publish_event(bus, "a", {}, key="a\nb")
    with pytest.raises(ContractError, match="encoded"):
        await publish_event(bus, "a", object())
