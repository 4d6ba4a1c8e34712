"""Listings of a stream's consumers read every page (the server answers 256 a page)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import ConsumerConfig

from agentbus.bus import Bus
from agentbus.events.consumers import topic_consumers
from agentbus.messages import utcnow
from agentbus.messaging.wire import parse_time

pytestmark = pytest.mark.nats


async def test_every_page_of_topic_consumers_is_listed(bus: Bus) -> None:
    count = 300  # more than one page
    names = [f"topic-paged-s{i}-_" for i in range(count)]
    filter_subject = bus.names.topic_subject("paged.topic")
    for start in range(0, count, 50):
        await asyncio.gather(
            *(
                bus.js.add_consumer(
                    bus.names.topics_stream,
                    ConsumerConfig(durable_name=n, name=n, filter_subject=filter_subject),
                )
                for n in names[start : start + 50]
            )
        )
    listed = await topic_consumers(bus)
    assert sorted(c.consumer for c in listed) == sorted(names)


def test_a_time_without_offset_is_read_as_utc() -> None:
    when = parse_time("2026-01-01T00:00:00")
    assert when is not None and when.utcoffset() is not None
    assert utcnow() >= when  # comparable: no TypeError
