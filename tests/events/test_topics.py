"""Publishing events on topics: names, the partition rule, headers, idempotency."""

from __future__ import annotations

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import ContractError
from agentbus.events import check_key, publish_event
from agentbus.names import Names, check_topic, check_topic_pattern, fnv1a_32, topic_part
from agentbus.settings import BusSettings


class FileReviewed(msgspec.Struct, frozen=True, tag=True):
    path: str
    issues: int


def test_fnv1a_32_matches_the_reference_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partition_rule_and_subjects() -> None:
    n = Names("ab")
    assert n.topics_stream == "AB_TOPICS"
    assert n.topic_subject("review.file_reviewed") == "ab.topics.review.file_reviewed._"
    part = f"k{fnv1a_32(b'src/a.py') % 8}"
    assert topic_part("src/a.py") == part
    assert n.topic_subject("review.file_reviewed", "src/a.py").endswith(f".{part}")


def test_filters_of_a_pattern_end_with_the_partition() -> None:
    n = Names("ab")
    assert n.topic_filters("review.*", "k3") == ["ab.topics.review.*.k3"]
    assert n.topic_filters("a.b.c.d.e.f.g.>", "_") == ["ab.topics.a.b.c.d.e.f.g.*._"]
    wide = n.topic_filters("review.>")
    assert wide[0] == "ab.topics.review.*.*" and len(wide) == 7
    assert wide[-1] == "ab.topics.review" + ".*" * 7 + ".*"


@pytest.mark.parametrize("bad", ["", "a..b", "A", "a.*", "a.>", "a b", ".".join("a" * 9)])
def test_bad_topics(bad: str) -> None:
    with pytest.raises(ContractError):
        check_topic(bad)


def test_patterns_allow_wildcards_only_as_whole_tokens() -> None:
    assert check_topic_pattern("review.*.done") == "review.*.done"
    assert check_topic_pattern(">") == ">"
    for bad in ("a.>.b", "a*", "a.b>"):
        with pytest.raises(ContractError):
            check_topic_pattern(bad)


def test_keys_are_header_safe() -> None:
    assert check_key("src/a b.py") == "src/a b.py"
    for bad in ("", "a\nb", "x" * 1025):
        with pytest.raises(ContractError):
            check_key(bad)


@pytest.mark.nats
async def test_publish_stores_once_per_event_id_with_headers(bus: Bus) -> None:
    event = FileReviewed(path="src/a.py", issues=2)
    first = await publish_event(
        bus, "review.file_reviewed", event, key="src/a.py", event_id="ev-1", source="me"
    )
    again = await publish_event(
        bus, "review.file_reviewed", event, key="src/a.py", event_id="ev-1", source="me"
    )
    assert (first.duplicate, again.duplicate, again.seq) == (False, True, first.seq)
    msg = await bus.js.get_msg(bus.names.topics_stream, first.seq)
    assert msg.subject == bus.names.topic_subject("review.file_reviewed", "src/a.py")
    assert msgspec.json.decode(msg.data or b"") == {
        "type": "FileReviewed",
        "path": "src/a.py",
        "issues": 2,
    }
    headers = msg.headers or {}
    assert headers["Nats-Msg-Id"] == "ev-1"
    assert headers["Agentbus-Event-Type"] == "FileReviewed"
    assert headers["Agentbus-Event-Key"] == "src/a.py"
    assert headers["Agentbus-Source"] == "me"
    plain = await Client(bus).events.receipt("review.started", {"n": 1})
    msg = await bus.js.get_msg(bus.names.topics_stream, plain.seq)
    assert "Agentbus-Event-Key" not in (msg.headers or {})
    assert len(plain.event_id) == 32 and plain.seq == first.seq + 1
    with pytest.raises(ContractError):
        await publish_event(bus, "review.started", {}, event_id="not an id")


@pytest.mark.nats
async def test_topics_stream_limits_come_from_settings(nats_url: str, prefix: str) -> None:
    settings = BusSettings(
        nats_url=nats_url, prefix=prefix, topics_max_age_s=3600, topics_max_bytes=1 << 20
    )
    b = await Bus.connect(settings)
    try:
        await b.ensure()
        config = (await b.js.stream_info(b.names.topics_stream)).config
    finally:
        await b.close()
    assert (config.max_age, config.max_bytes, config.duplicate_window) == (3600, 1 << 20, 120)
    assert config.subjects == [f"{prefix}.topics.>"]


@pytest.mark.nats
async def test_a_task_handler_publishes_as_its_agent(bus: Bus) -> None:
    from agentbus.messages import Task
    from agentbus.runtime import TaskContext

    task = Task(task_id="t-1", capability="review", input=msgspec.Raw(b"null"))
    ctx = TaskContext(task=task, attempt=1, agent_id="reviewer-0", bus=bus, client=Client(bus))
    seq = await ctx.events.publish("review.done", FileReviewed(path="a", issues=0), key="a")
    msg = await bus.js.get_msg(bus.names.topics_stream, seq)
    assert (msg.headers or {})["Agentbus-Source"] == "reviewer-0"
