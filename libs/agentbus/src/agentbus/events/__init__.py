"""Agent events on topics: publish (``topics``) and subscribe (``subscriptions``).

``ctx.events.publish(topic, payload, key=)`` stores an event on ``<P>_TOPICS``;
``@agent.on_event(pattern, mode=)`` handles them. The wire layout is in
``docs/protocol.md`` ("Events between agents"), the design in ``docs/architecture.md``.
"""

from agentbus.events.handlers import EventHandlers
from agentbus.events.routes import (
    EventContext,
    EventHandler,
    EventRoute,
    Start,
    consumer_plan,
    event_route,
    parse_start,
)
from agentbus.events.subscriptions import Subscriptions, topic_of
from agentbus.events.topics import Events, check_key, publish_event

__all__ = [
    "EventContext",
    "EventHandler",
    "EventHandlers",
    "EventRoute",
    "Events",
    "Start",
    "Subscriptions",
    "check_key",
    "consumer_plan",
    "event_route",
    "parse_start",
    "publish_event",
    "topic_of",
]
