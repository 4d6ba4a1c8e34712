"""A shared subscription of a deployment with three replica processes handles 10,000
events, each acked once in total, while replicas are killed with SIGKILL.

An event is handled twice only when the replica that first handled it died before its
ack reached the server: every duplicate must have an earlier handling by a killed
process. The duplicates are counted and printed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.events import publish_event
from tests._harness.event_listener import Note
from tests._harness.event_processes import Listeners, listeners, registered
from tests._harness.polling import eventually

pytestmark = [pytest.mark.nats, pytest.mark.slow]
EVENTS = 10_000


async def _publish_all(bus: Bus, count: int, chunk: int = 250) -> None:
    for first in range(0, count, chunk):
        notes = [Note(n=i) for i in range(first, min(first + chunk, count))]
        await asyncio.gather(*(publish_event(bus, "work.load", n, source="test") for n in notes))


def start(group: Listeners, agent_id: str) -> int:
    # A lease long enough that a live replica starved of CPU on a loaded machine still
    # acks in time: a redelivery then means its first handler was killed, as asserted.
    return group.start(agent_id, deployment="load", AGENTBUS_AGENT_LEASE_S="10")


@pytest.mark.timeout(150)
async def test_shared_subscription_survives_sigkill_of_replicas(
    bus: Bus, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    with listeners(nats_url, prefix, tmp_path) as group:
        pids = {f"load-{i}": start(group, f"load-{i}") for i in range(3)}
        await registered(bus, pids)
        publishing = asyncio.create_task(_publish_all(bus, EVENTS))

        # Kill two replicas mid-run (one twice), starting each again under its id.
        for victim, after in (("load-0", 1500), ("load-1", 4000), ("load-0", 6500)):

            async def handled_enough(n: int = after) -> bool:
                return len(group.handled()) >= n

            await eventually(handled_enough, timeout_s=60, every_s=0.1)
            group.kill(pids[victim])
            pids[victim] = start(group, victim)
        await publishing

        async def all_unique() -> bool:
            return len({r["n"] for r in group.handled()}) == EVENTS

        try:
            await eventually(all_unique, timeout_s=90, every_s=0.25, what="10,000 events handled")
        except AssertionError:
            print(group.logs())
            raise
        stream = bus.names.topics_stream

        async def settled() -> bool:
            info = await bus.js.consumer_info(stream, "topic-load-on_work")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(settled, timeout_s=30, what="every event acked")
        info = await bus.js.consumer_info(stream, "topic-load-on_work")
        records = group.handled()
    elapsed_s = time.monotonic() - began
    by_event: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_event[int(r["n"])].append(r)
    twice = {n: rs for n, rs in by_event.items() if len(rs) > 1}
    unexplained = [
        n for n, rs in twice.items() if not any(r["pid"] in group.killed for r in rs[:-1])
    ]
    agents = {str(r["agent"]) for r in records}
    redelivered = sum(r["delivery"] > 1 for r in records)
    print(
        f"\n{EVENTS} events, {len(records)} handlings, {len(twice)} handled twice "
        f"(first handler killed before its ack), {len(group.killed)} SIGKILLs, "
        f"{redelivered} handled on a redelivery, {elapsed_s:.1f} s, replicas {sorted(agents)}"
    )
    assert set(by_event) == set(range(EVENTS))
    assert unexplained == [], f"handled twice without a killed first handler: {unexplained[:10]}"
    assert info.ack_floor.stream_seq == info.delivered.stream_seq  # every one acked
    assert agents == {"load-0", "load-1", "load-2"}
