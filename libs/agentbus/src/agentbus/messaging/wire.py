"""Headers and bodies of direct messages, broadcasts and asks (``docs/protocol.md``).

The body is the payload as msgspec JSON (the sender's Struct or any encodable
value), so ``nats stream view <P>_INBOX`` shows it readable; the metadata is in
headers.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from agentbus.messages import MessageReceipt, encode

MSG_ID = "Nats-Msg-Id"
"""A direct message's id (JetStream deduplication: a retried send is stored once)."""
TTL = "Nats-TTL"
"""Per-message TTL of a direct message, ``<n>s``."""
MESSAGE_ID = "Agentbus-Message-Id"
"""A broadcast's or an ask's id (a direct message's is ``Nats-Msg-Id``)."""
SOURCE = "Agentbus-Source"
"""Who sent it: an agent id, or a client's connection name."""
PAYLOAD_TYPE = "Agentbus-Payload-Type"
"""The payload's type name (a Struct's class name, else the Python type name)."""
SENT_AT = "Agentbus-Sent-At"
"""When it was sent, RFC 3339 UTC."""
EXPIRES_AT = "Agentbus-Expires-At"
"""When a direct message's TTL ends, RFC 3339 UTC: an agent does not handle it later."""

decode_receipt = msgspec.json.Decoder(MessageReceipt).decode


def encode_payload(payload: Any) -> bytes:
    """The body of a message: ``payload`` as msgspec JSON.

    Raises:
        ContractError: ``payload`` is not msgspec-encodable.
    """
    from agentbus.errors import ContractError

    try:
        return encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        kind = type(payload).__name__
        raise ContractError(f"payload of type {kind} does not encode: {exc}") from exc


def type_name(payload: Any) -> str:
    """What ``Agentbus-Payload-Type`` says of ``payload``."""
    return type(payload).__name__


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 header value as an aware datetime, None if absent or malformed.

    A value without an offset is read as UTC (comparing it with ``utcnow()`` must work).
    """
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def payload_type(fn: Callable[..., Any]) -> Any:
    """The annotation of ``fn``'s second parameter (``Any`` when it has none)."""
    hints = typing.get_type_hints(fn)
    params = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
    return hints.get(params[1], Any) if len(params) > 1 else Any


def decoder(type_: Any) -> Callable[[bytes], Any]:
    """A reusable JSON decoder of ``type_``."""
    return msgspec.json.Decoder(type_).decode
