"""The publish side of agent events: one JetStream publish per event on ``<P>_TOPICS``.

An event on ``topic`` goes to ``Names.topic_subject(topic, key)``
(``<p>.topics.<topic>.<_|k<N>>``) with the headers

- ``Nats-Msg-Id: <event_id>`` (default a uuid4 hex): a retried publish with the same
  id within the stream's duplicate window (2 min) is stored once;
- ``Agentbus-Event-Type: <payload type name>`` (``Document``, ``dict``, ...);
- ``Agentbus-Event-Key: <key>`` (absent without key);
- ``Agentbus-Source: <agent id or client name>``;

and the payload as msgspec JSON for body, so ``nats stream view <P>_TOPICS`` shows it.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import msgspec
import nats.errors
import nats.js.errors

from agentbus.bus import Bus
from agentbus.errors import ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import encode
from agentbus.names import check_task_id, check_topic

MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_TYPE_HEADER = "Agentbus-Event-Type"
EVENT_KEY_HEADER = "Agentbus-Event-Key"
SOURCE_HEADER = "Agentbus-Source"
KEY_MAX_CHARS = 256
"""Longest event key (any characters but control characters: it travels in a header)."""


class PublishedEvent(NamedTuple):
    """What the stream answered to a publish.

    Attributes:
        seq: stream sequence of the event in ``<P>_TOPICS``.
        duplicate: True when an event with this id was stored already (``seq`` is its).
        event_id: the event's id (``Nats-Msg-Id``).
    """

    seq: int
    duplicate: bool
    event_id: str


def check_event_key(key: str) -> str:
    """Validate an event key: 1-256 characters without control characters.

    Raises:
        ContractError: the key is empty, too long or holds a control character.
    """
    if not key or len(key) > KEY_MAX_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ContractError(
            f"event key must be 1-{KEY_MAX_CHARS} characters without control characters, "
            f"got {key[:80]!r}"
        )
    return key


def event_headers(payload: Any, *, event_id: str, key: str | None, source: str) -> dict[str, str]:
    """The headers of one event (see the module docstring)."""
    headers = {MSG_ID_HEADER: event_id, EVENT_TYPE_HEADER: type(payload).__name__}
    if key is not None:
        headers[EVENT_KEY_HEADER] = key
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
) -> PublishedEvent:
    """Publish ``payload`` (a msgspec Struct or any msgspec-encodable value) on ``topic``.

    Args:
        bus: a connected bus whose ``ensure()`` made ``<P>_TOPICS``.
        topic: 1-8 dot-separated tokens of ``[a-z0-9_-]`` (``names.check_topic``).
        payload: the event body, sent as msgspec JSON.
        key: orders events: those with one key are handled one at a time, in order.
        event_id: idempotency id (1-128 of ``[A-Za-z0-9_-]``); default a uuid4 hex.
        source: the publisher (agent id or client name), sent as ``Agentbus-Source``.

    Returns:
        ``PublishedEvent(seq, duplicate, event_id)``.

    Raises:
        ContractError: a bad topic, key or event id, or a payload msgspec cannot encode.
        UnavailableError: no ``<P>_TOPICS`` stream (nobody ran ``Bus.ensure()``), or the
            stream refused the event.
        RequestTimeoutError: no ack within the bus request timeout.
    """
    check_topic(topic)
    if key is not None:
        check_event_key(key)
    event_id = check_task_id(event_id, "event id") if event_id is not None else uuid.uuid4().hex
    try:
        body = encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ContractError(f"event payload cannot be encoded as JSON: {exc}") from exc
    subject = bus.names.topic_subject(topic, key)
    headers = event_headers(payload, event_id=event_id, key=key, source=source)
    timeout_s = bus.settings.request_timeout_s
    try:
        ack = await bus.js.publish(subject, body, timeout=timeout_s, headers=headers)
    except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as exc:
        stream = bus.names.topics_stream
        raise UnavailableError(f"no stream takes {subject!r}: is {stream} made?") from exc
    except nats.js.errors.APIError as exc:
        raise UnavailableError(f"{bus.names.topics_stream} refused the event: {exc}") from exc
    except TimeoutError as exc:
        raise RequestTimeoutError(subject, timeout_s) from exc
    return PublishedEvent(seq=ack.seq, duplicate=bool(ack.duplicate), event_id=event_id)
