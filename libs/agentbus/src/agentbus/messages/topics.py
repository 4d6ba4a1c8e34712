"""Agent events on topics: subscription declarations and publish receipts.

The events themselves carry the publisher's own payload (any msgspec-encodable
value) with metadata in headers; ``docs/protocol.md``, "Events between agents".
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import Message, Token

SubscriptionMode = Literal["shared", "each"]
"""``shared``: each subscribing deployment gets every event once, spread over its
replicas; ``each``: every live replica gets every event."""

START_PATTERN = r"^(new|all|[1-9][0-9]*|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ].+)$"
"""``new``, ``all``, a stream sequence (decimal) or an RFC 3339 time."""


class Subscription(Message, frozen=True, kw_only=True):
    """A deployment's subscription to a topic pattern (``Deployment.subscriptions``).

    Declared in the fleet file so that ``agentbus ps`` shows who listens to what; the
    agent's ``@agent.on_event`` handler is what consumes.
    """

    pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    """Topic pattern with NATS wildcards: ``review.>``, ``review.*.done``."""
    mode: SubscriptionMode = "shared"
    name: Token | None = None
    """Subscription name (a token; the handler function's name by default), part of the
    durable consumer names ``topic-<deployment>-<name>[-k<N>]``."""
    start: Annotated[str, msgspec.Meta(pattern=START_PATTERN)] = "new"
    """Where a new subscription starts: ``new`` (events published from now on),
    ``all`` (everything the stream keeps), a stream sequence or an RFC 3339 time."""


class EventReceipt(Message, frozen=True, kw_only=True):
    """What publishing an event on a topic returns (and ``POST /v1/events/{topic}``)."""

    topic: str
    seq: int
    """Stream sequence in ``<P>_TOPICS``: a replay can start from it."""
    event_id: str
    """The ``Nats-Msg-Id``: a retried publish with the same id is stored once."""
    duplicate: bool = False
    """True when the stream already held an event with this id (not stored again)."""


MESSAGES: tuple[type[Message], ...] = (Subscription, EventReceipt)
