"""Agent events: publish on topics of ``<P>_TOPICS``, subscribe with durable consumers.

- ``topics``: the publish side (``publish_event``) and the event headers.
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
