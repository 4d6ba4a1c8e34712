"""Subscriptions with agents as processes: each-replica fan-out, replay from a
sequence, per-key order, poison events (the 10,000-event shared test is in
``test_shared_load``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.events import publish_event
from agentbus.messages import ErrorEvent
from tests._harness.event_listener import Note
from tests._harness.event_processes import listeners, registered
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


async def _publish(bus: Bus, topic: str, notes: list[Note], key: str | None = None) -> list[int]:
    return [(await publish_event(bus, topic, n, key=key, source="test")).seq for n in notes]


@pytest.mark.timeout(90)
async def test_each_replica_subscription_reaches_every_live_replica(
    bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    with listeners(nats_url, prefix, tmp_path, EV_MODE="each") as group:
        pids = {f"listeners-{i}": group.start(f"listeners-{i}") for i in range(3)}
        await registered(bus, pids)
        await _publish(bus, "work.each", [Note(n=i) for i in range(20)])

        async def everyone_has_all() -> bool:
            seen = defaultdict(set)
            for r in group.handled():
                seen[r["agent"]].add(r["n"])
            return all(seen[a] == set(range(20)) for a in pids)

        await eventually(everyone_has_all, timeout_s=30, what="each replica handled all 20")
        # A replica killed and started again resumes its own consumers (each-<agent_id>-*).
        group.kill(pids["listeners-2"])
        await _publish(bus, "work.each", [Note(n=i) for i in range(20, 30)])
        pids["listeners-2"] = group.start("listeners-2")
        await registered(bus, pids)

        async def all_thirty() -> bool:
            seen = defaultdict(set)
            for r in group.handled():
                seen[r["agent"]].add(r["n"])
            return all(seen[a] == set(range(30)) for a in pids)

        await eventually(all_thirty, timeout_s=30, what="each replica handled all 30")
    consumers = [c.name async for c in _consumers(bus)]
    assert {"each-listeners-0-on_work", "each-listeners-0-on_work-k7"} <= set(consumers)
    assert not any(c.startswith("topic-") for c in consumers)


async def _consumers(bus: Bus):  # type: ignore[no-untyped-def]
    for info in await bus.js.consumers_info(bus.names.topics_stream):
        yield info


@pytest.mark.timeout(90)
async def test_subscriptions_replay_from_a_sequence_and_from_a_time(
    bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    seqs = await _publish(bus, "work.old", [Note(n=i) for i in range(10)])
    stored = await bus.js.get_msg(bus.names.topics_stream, seqs[3])
    assert stored.time is not None
    since = stored.time  # the stream's own clock: events 3.. are at or after it
    by_seq, by_time = tmp_path / "seq", tmp_path / "time"
    by_seq.mkdir()
    by_time.mkdir()
    with (
        listeners(nats_url, prefix, by_seq, EV_START=str(seqs[6])) as from_seq,
        listeners(nats_url, prefix, by_time, EV_START=since.isoformat()) as from_time,
    ):
        pids = {"replay-0": from_seq.start("replay-0", deployment="replay")}
        pids["replayt-0"] = from_time.start("replayt-0", deployment="replayt")
        await registered(bus, pids)
        await _publish(bus, "work.new", [Note(n=10)])

        async def both_done() -> bool:
            return len(from_seq.handled()) >= 5 and len(from_time.handled()) >= 8

        await eventually(both_done, timeout_s=30, what="the replays handled")
        await asyncio.sleep(0.5)  # nothing older arrives late
        handled_seq = sorted(r["n"] for r in from_seq.handled())
        handled_time = sorted(r["n"] for r in from_time.handled())
    assert handled_seq == [6, 7, 8, 9, 10]
    assert handled_time == [3, 4, 5, 6, 7, 8, 9, 10]
    info = await bus.js.consumer_info(bus.names.topics_stream, "topic-replay-on_work")
    assert info.config.opt_start_seq == seqs[6]


@pytest.mark.timeout(120)
async def test_keyed_events_are_handled_in_order_per_key_across_replicas_and_a_kill(
    bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = [f"src/fïle {k}.py" for k in range(12)]  # any UTF-8 but CR/LF
    per_key = 30
    with listeners(nats_url, prefix, tmp_path) as group:
        pids = {f"listeners-{i}": group.start(f"listeners-{i}") for i in range(3)}
        await registered(bus, pids)
        sent: dict[str, list[int]] = {}

        async def one_key(key: str) -> None:
            notes = [Note(n=i, sleep_s=0.01 * (i % 3)) for i in range(per_key)]
            sent[key] = await _publish(bus, "work.keyed", notes, key=key)

        await asyncio.gather(*(one_key(k) for k in keys))

        async def some_handled() -> bool:
            return len(group.handled()) >= 60

        await eventually(some_handled, timeout_s=60, what="60 keyed events handled")
        group.kill(pids["listeners-1"])  # mid-partition: its unacked event comes back first
        pids["listeners-1"] = group.start("listeners-1")

        async def all_handled() -> bool:
            return len({(r["key"], r["seq"]) for r in group.handled()}) >= per_key * len(keys)

        await eventually(all_handled, timeout_s=60, what="360 keyed events handled")
        records = group.handled()
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in records:  # file order = handling order (one write per handling)
        seqs = by_key[r["key"]]
        if seqs and seqs[-1] == r["seq"]:  # handled, killed before the ack, handled again
            continue
        seqs.append(r["seq"])
    assert dict(by_key) == sent
    assert len({r["agent"] for r in records}) > 1, "the keyed load was spread over replicas"


@pytest.mark.timeout(90)
async def test_poison_event_does_not_stop_the_subscription(
    bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    errors: list[ErrorEvent] = []

    async def on_error(msg) -> None:  # type: ignore[no-untyped-def]
        errors.append(msgspec.json.decode(msg.data, type=ErrorEvent))

    await bus.nc.subscribe(bus.names.agent_error_subject("poison-0"), cb=on_error)
    with listeners(nats_url, prefix, tmp_path, EV_MAX_DELIVERIES="2") as group:
        pid = group.start("poison-0", deployment="poison")
        await registered(bus, {"poison-0": pid})
        key = "same-key"
        await bus.js.publish(bus.names.topic_subject("work.bad", key), b"\x00 not json")
        await _publish(bus, "work.bad", [Note(n=1, fail="fatal")], key=key)
        await _publish(bus, "work.bad", [Note(n=2, fail="retry")], key=key)
        await _publish(bus, "work.bad", [Note(n=3)], key=key)
        await _publish(bus, "work.bad", [Note(n=4, fail="fatal"), Note(n=5)])

        async def good_ones() -> bool:
            return sorted(r["n"] for r in group.handled()) == [3, 5] and len(errors) >= 4

        await eventually(good_ones, timeout_s=40, what="good events handled, 4 error events")
    reasons = sorted(e.reason for e in errors)
    assert all(e.service == "agent:poison-0" for e in errors)
    assert any("does not decode" in r for r in reasons)
    assert sum("not retryable" in r for r in reasons) == 2
    assert any("delivery 2 was the last" in r and "RuntimeError" in r for r in reasons)
    info = await bus.js.consumer_info(bus.names.topics_stream, "topic-poison-on_work")
    assert info.num_ack_pending == 0 and info.num_pending == 0
