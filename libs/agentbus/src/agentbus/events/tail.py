"""Read events as they are stored (``agentbus events tail``): an ordered reader.

An ``OrderedReader`` (``agentbus.events.reader``) on ``<P>_TOPICS`` filtered by a
subscription pattern reads the stream from a start (new events, a stream sequence or
a time) without any durable state: it acknowledges nothing, so it never takes an
event from a subscriber.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.events.reader import OrderedReader, Start
from agentbus.events.topics import (
    KEY_HEADER,
    MSG_ID_HEADER,
    SOURCE_HEADER,
    TYPE_HEADER,
)
from agentbus.names import Names, check_topic_pattern

_POLL_S = 0.25
"""How often a tail checks ``stop`` while no event arrives."""


class StoredEvent(msgspec.Struct, kw_only=True):
    """One event as the stream holds it.

    ``payload`` is the decoded JSON body (the raw text if it is not JSON);
    ``published_at`` the time the stream stored it (UTC).
    """

    seq: int
    topic: str
    key: str | None
    event_id: str
    type: str
    source: str
    published_at: datetime
    payload: Any


def topic_of(subject: str, names: Names) -> str:
    """The topic of an event subject ``<p>.topics.<topic>.<part>``."""
    return subject.removeprefix(f"{names.prefix}.topics.").rpartition(".")[0]


def stored_event(msg: Msg, names: Names) -> StoredEvent:
    """``msg`` of ``<P>_TOPICS`` as a ``StoredEvent``."""
    headers = msg.headers or {}
    try:
        payload = msgspec.json.decode(msg.data)
    except msgspec.DecodeError:
        payload = msg.data.decode(errors="replace")
    meta = msg.metadata
    return StoredEvent(
        seq=meta.sequence.stream,
        topic=topic_of(msg.subject, names),
        key=headers.get(KEY_HEADER),
        event_id=headers.get(MSG_ID_HEADER, ""),
        type=headers.get(TYPE_HEADER, ""),
        source=headers.get(SOURCE_HEADER, ""),
        published_at=meta.timestamp,
        payload=payload,
    )


async def tail_events(
    bus: Bus, pattern: str, *, start: Start = None, stop: asyncio.Event | None = None
) -> AsyncIterator[StoredEvent]:
    """Yield the events matching ``pattern`` from ``start`` on, until ``stop`` is set.

    Args:
        bus: a connected bus.
        pattern: a subscription pattern (``review.>``, ``*.done``).
        start: None new events only; a stream sequence; a time (the first event
            stored at or after it).
        stop: ends the tail (checked at least every 0.25 s); None: follow forever.

    Raises:
        ContractError: ``pattern`` is not a valid subscription pattern.
        UnavailableError: no ``<P>_TOPICS`` stream.
    """
    names = bus.names
    check_topic_pattern(pattern)
    # One server-side filter: ``<p>.topics.<pattern>`` for a pattern ending in ``>``
    # (which also matches the partition token), else the pattern's one filter.
    subject = (
        f"{names.prefix}.topics.{pattern}"
        if pattern.endswith(">")
        else names.topic_filters(pattern)[0]
    )
    stop = stop or asyncio.Event()
    async with OrderedReader(bus, names.topics_stream, [subject], start=start) as reader:
        while not stop.is_set():
            for msg in await reader.fetch(_POLL_S):
                yield stored_event(msg, names)
