"""Event handler declarations, what a handler gets, and the consumers behind them.

``@agent.on_event(pattern, mode=, start=, name=)`` makes an ``EventRoute``;
``consumer_plan`` turns it into the durable consumers of ``<P>_TOPICS`` it reads
(``docs/architecture.md``, "Events between agents", says why this layout):

- one consumer per partition: ``_`` (keyless events, up to ``max_in_flight`` at once
  per replica) and ``k0`` .. ``k7`` (keyed events, ``max_ack_pending=1``: the events
  of one key are handled one at a time, in stream order, across every replica and
  every crash);
- shared mode: ``topic-<deployment>-<name>[-k<N>]``, bound by every replica of the
  deployment (JetStream spreads the events over them);
- each mode: ``each-<agent_id>-<name>[-k<N>]``, one set per replica, removed by the
  server after ``EACH_INACTIVE_THRESHOLD_S`` without a pull (a replica gone for good).
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.errors import ContractError
from agentbus.messages import Subscription, SubscriptionMode
from agentbus.names import TOPIC_PARTS, Names, check_token, check_topic_pattern

if TYPE_CHECKING:
    from agentbus.bus import Bus
    from agentbus.events.topics import Events

Start = Literal["new", "all"] | int | datetime
"""Where a new subscription starts: ``new``, ``all``, a stream sequence or a time."""
EACH_INACTIVE_THRESHOLD_S = 3600.0
"""An each-replica consumer no replica has pulled from for this long is deleted."""
KEYLESS_MAX_ACK_PENDING = 10_000
"""Keyless events in flight at once per subscription, over all its replicas."""


@dataclass(frozen=True, slots=True)
class EventContext:
    """What an event handler gets besides the payload.

    Attributes:
        topic: the event's topic (``review.file_reviewed``).
        key: its key, None for a keyless event.
        event_id: its ``Nats-Msg-Id``.
        seq: its stream sequence in ``<P>_TOPICS``.
        published_at: when the stream stored it (UTC).
        source: who published it (agent id or client name), may be empty.
        delivery: 1 for the first delivery to this subscription, 2 after a retry...
        agent_id: id of the agent running the handler.
        events: publish more events, as this agent.
        bus: the agent's connection.
    """

    topic: str
    key: str | None
    event_id: str
    seq: int
    published_at: datetime
    source: str
    delivery: int
    agent_id: str
    events: Events
    bus: Bus


EventHandler = Callable[[EventContext, Any], Awaitable[None]]
"""``async def fn(ctx: EventContext, payload)`` handling the events of a subscription."""


@dataclass(frozen=True, slots=True)
class EventRoute:
    """One subscription of an agent: pattern, handler, payload type, delivery options."""

    pattern: str
    fn: EventHandler
    payload_type: Any
    mode: SubscriptionMode
    name: str
    start: Start
    max_deliveries: int
    max_in_flight: int

    def declaration(self) -> Subscription:
        """The wire form (``Deployment.subscriptions``, ``agentbus ps``)."""
        start = self.start
        text = start.isoformat() if isinstance(start, datetime) else str(start)
        return Subscription(pattern=self.pattern, mode=self.mode, name=self.name, start=text)


def event_route(
    pattern: str,
    fn: EventHandler,
    *,
    mode: SubscriptionMode = "shared",
    start: Start = "new",
    name: str | None = None,
    max_deliveries: int = 5,
    max_in_flight: int = 64,
) -> EventRoute:
    """The route of handler ``fn``: its payload type is its second parameter's annotation.

    Raises:
        ContractError: bad pattern, mode, start, name (default ``fn.__name__``, a
            token) or a limit below 1.
    """
    check_topic_pattern(pattern)
    if mode not in ("shared", "each"):
        raise ContractError(f"subscription mode must be 'shared' or 'each', got {mode!r}")
    name = check_token("subscription name", name or fn.__name__.lower())
    parse_start(start)
    if max_deliveries < 1 or max_in_flight < 1:
        raise ContractError("max_deliveries and max_in_flight must be at least 1")
    hints = typing.get_type_hints(fn)
    params = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
    payload_type = hints.get(params[1], Any) if len(params) > 1 else Any
    return EventRoute(pattern, fn, payload_type, mode, name, start, max_deliveries, max_in_flight)


def parse_start(start: Start | str) -> Start:
    """``start`` as given to ``on_event``, or its wire form (``Subscription.start``).

    Raises:
        ContractError: not ``new``, ``all``, a positive sequence or a time.
    """
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ContractError("a subscription's start time must be timezone-aware")
        return start
    if isinstance(start, int) and not isinstance(start, bool):
        if start < 1:
            raise ContractError(f"a start sequence is 1 or more, got {start}")
        return start
    if start in ("new", "all"):
        return typing.cast(Start, start)
    if isinstance(start, str):
        if start.isdigit():
            return parse_start(int(start))
        try:
            return parse_start(datetime.fromisoformat(start))
        except ValueError:
            pass
    raise ContractError(f"start must be 'new', 'all', a stream sequence or a time: {start!r}")


@dataclass(frozen=True, slots=True)
class PlannedConsumer:
    """One durable consumer of a subscription: its partition and config."""

    part: str
    config: ConsumerConfig

    @property
    def name(self) -> str:
        """The durable name."""
        assert self.config.durable_name is not None
        return self.config.durable_name


def consumer_plan(
    names: Names, route: EventRoute, *, owner: str, ack_wait_s: float
) -> list[PlannedConsumer]:
    """The consumers ``route`` reads: one per partition token (``TOPIC_PARTS``).

    ``owner`` is the deployment (shared mode) or the agent id (each mode).
    """
    return subscription_plan(
        names,
        route.declaration(),
        owner=owner,
        ack_wait_s=ack_wait_s,
        max_deliveries=route.max_deliveries,
    )


def subscription_plan(
    names: Names,
    subscription: Subscription,
    *,
    owner: str,
    ack_wait_s: float,
    max_deliveries: int = 5,
) -> list[PlannedConsumer]:
    """The consumers of a declared subscription (its ``name`` must be set).

    What ``consumer_plan`` makes for a handler, from the fleet file's declaration: a
    supervisor provisions these for replicas that may not create consumers.
    """
    assert subscription.name is not None
    route_name, mode, pattern = subscription.name, subscription.mode, subscription.pattern
    base = f"topic-{owner}-{route_name}" if mode == "shared" else f"each-{owner}-{route_name}"
    start = parse_start(subscription.start)
    policy = {"new": DeliverPolicy.NEW, "all": DeliverPolicy.ALL}.get(str(start))
    plan = []
    for part in TOPIC_PARTS:
        durable = base if part == "_" else f"{base}-{part}"
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subjects=names.topic_filters(pattern, part),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=max_deliveries + 1,  # a backstop: the runtime terms first
            max_ack_pending=KEYLESS_MAX_ACK_PENDING if part == "_" else 1,
            inactive_threshold=EACH_INACTIVE_THRESHOLD_S if mode == "each" else None,
            deliver_policy=policy or DeliverPolicy.ALL,
            metadata={
                "agentbus_pattern": pattern,
                "agentbus_mode": mode,
                "agentbus_owner": owner,
                "agentbus_subscription": route_name,
                "agentbus_part": part,
            },
        )
        if isinstance(start, int):
            config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start
        elif isinstance(start, datetime):
            config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, start
        plan.append(PlannedConsumer(part, config))
    return plan
