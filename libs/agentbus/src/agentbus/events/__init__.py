"""Agent events: publish on topics of ``<P>_TOPICS``, subscribe with durable consumers.

- ``topics``: the publish side (``publish_event``) and the event headers;
- ``tail``: read events as they are stored (an ordered consumer, no durable state);
- ``consumers``: the durable consumers of ``<P>_TOPICS`` (who subscribes, how far behind).
"""

from agentbus.events.topics import (
    EVENT_KEY_HEADER,
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    SOURCE_HEADER,
    PublishedEvent,
    publish_event,
)

__all__ = [
    "EVENT_KEY_HEADER",
    "EVENT_TYPE_HEADER",
    "MSG_ID_HEADER",
    "SOURCE_HEADER",
    "PublishedEvent",
    "publish_event",
]
