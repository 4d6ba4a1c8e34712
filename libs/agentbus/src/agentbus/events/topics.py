"""Publishing agent events on topics: ``publish_event`` and ``Events``.

An event is the publisher's payload (a msgspec Struct or any msgspec-encodable
value) encoded as JSON, stored on the Limits stream ``<P>_TOPICS`` under
``<p>.topics.<topic>.<part>`` (``Names.topic_subject``: ``_`` without key, ``k<N>``,
``N = fnv1a_32(key) % 8``, with one), with its metadata in headers:

- ``Nats-Msg-Id``: the event id (a uuid4 hex by default); a retried publish with the
  same id within the stream's duplicate window (2 min) is stored once;
- ``Agentbus-Event-Type``: the payload's type name (the Struct's class name);
- ``Agentbus-Event-Key``: the key, absent without one;
- ``Agentbus-Source``: the publishing agent's id or client's name.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from agentbus.bus import Bus
from agentbus.errors import ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import EventReceipt
from agentbus.names import check_task_id, check_topic

MSG_ID_HEADER = "Nats-Msg-Id"
TYPE_HEADER = "Agentbus-Event-Type"
KEY_HEADER = "Agentbus-Event-Key"
SOURCE_HEADER = "Agentbus-Source"
KEY_MAX_BYTES = 1024
"""Longest event key, in bytes of UTF-8."""

_encoder = msgspec.json.Encoder()


def check_key(key: str) -> str:
    """Validate an event key: 1-1024 bytes of UTF-8, no line breaks (it is a header).

    Raises:
        ContractError: the key is empty, too long or holds a CR or LF.
    """
    size = len(key.encode())
    if not 1 <= size <= KEY_MAX_BYTES or "\r" in key or "\n" in key:
        raise ContractError(
            f"event key must be 1-{KEY_MAX_BYTES} bytes of UTF-8 without line breaks, "
            f"got {size} bytes"
        )
    return key


def event_headers(payload: Any, *, event_id: str, key: str | None, source: str) -> dict[str, str]:
    """The headers of an event (see the module docstring)."""
    headers = {MSG_ID_HEADER: event_id, TYPE_HEADER: type(payload).__name__}
    if key is not None:
        headers[KEY_HEADER] = key
    if source:
        headers[SOURCE_HEADER] = source
    return headers


async def publish_event(
    bus: Bus,
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    event_id: str | None = None,
    source: str = "",
) -> EventReceipt:
    """Store ``payload`` as an event on ``topic``; the receipt names its stream sequence.

    ``key`` selects the partition (events of one key are handled in publish order by
    each subscription); ``event_id`` (1-128 characters of ``[A-Za-z0-9_-]``, default a
    uuid4 hex) makes a retried publish idempotent: the second is not stored again and
    the receipt says ``duplicate`` with the first one's sequence.

    Raises:
        ContractError: bad topic, key or event id, or a payload msgspec cannot encode.
        UnavailableError: the topics stream does not exist, or refused the event.
        RequestTimeoutError: no stream acknowledgement in time.
    """
    check_topic(topic)
    if key is not None:
        check_key(key)
    event_id = check_task_id(event_id, "event id") if event_id else uuid.uuid4().hex
    try:
        data = _encoder.encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ContractError(f"event payload cannot be encoded: {exc}") from exc
    subject = bus.names.topic_subject(topic, key)
    headers = event_headers(payload, event_id=event_id, key=key, source=source)
    try:
        ack = await bus.js.publish(subject, data, headers=headers)
    except nats.errors.NoRespondersError as exc:
        raise UnavailableError(f"no stream stores {subject!r} (run Bus.ensure)") from exc
    except nats.js.errors.APIError as exc:
        raise UnavailableError(f"stream refused the event on {subject!r}: {exc}") from exc
    except TimeoutError as exc:
        raise RequestTimeoutError(subject, bus.settings.request_timeout_s) from exc
    return EventReceipt(topic=topic, seq=ack.seq, event_id=event_id, duplicate=bool(ack.duplicate))


class Events:
    """Publish events on ``bus`` as ``source`` (``ctx.events``, ``Client.events``)."""

    def __init__(self, bus: Bus, *, source: str = "") -> None:
        self.bus = bus
        self.source = source

    async def publish(
        self, topic: str, payload: Any, *, key: str | None = None, event_id: str | None = None
    ) -> int:
        """Publish ``payload`` on ``topic``; its stream sequence (``publish_event``).

        Raises:
            ContractError, UnavailableError, RequestTimeoutError: as ``publish_event``.
        """
        receipt = await self.receipt(topic, payload, key=key, event_id=event_id)
        return receipt.seq

    async def receipt(
        self, topic: str, payload: Any, *, key: str | None = None, event_id: str | None = None
    ) -> EventReceipt:
        """Publish like ``publish``; the full receipt (event id, duplicate flag).

        Raises:
            ContractError, UnavailableError, RequestTimeoutError: as ``publish_event``.
        """
        return await publish_event(
            self.bus, topic, payload, key=key, event_id=event_id, source=self.source
        )
