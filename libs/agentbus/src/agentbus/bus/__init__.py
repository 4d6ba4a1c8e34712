"""The connection and what rides on it.

- ``connection``: ``Bus``, one NATS connection per process with the streams, buckets
  and typed requests of the contract;
- ``contract``: the streams, buckets and object stores, created by part;
- ``publisher``: acked JetStream publishes, many in flight, at little cost each;
- ``pulls``: no-wait pull requests and their answers;
- ``blobs``: values over the inline limit in the Object Store, by reference;
- ``notices``: ready notices that wake one agent with a free slot;
- ``dial``: how ``Bus.connect`` reaches nats-server.
"""

from agentbus.bus.connection import Bus
from agentbus.bus.contract import (
    EVENTS_MAX_AGE_S,
    LOGS_MAX_MSGS_PER_AGENT,
    REGISTRY_TTL_S,
    TASK_RECORD_TTL_S,
    stream_replicas,
)

__all__ = [
    "EVENTS_MAX_AGE_S",
    "LOGS_MAX_MSGS_PER_AGENT",
    "REGISTRY_TTL_S",
    "TASK_RECORD_TTL_S",
    "Bus",
    "stream_replicas",
]
