"""Scaffolding shared by the five services.

- ``micro``: typed ``nats.micro`` endpoints, bad-input handling, metrics, the process
  entry point (``run_service``: exits with status 3 when the connection is lost);
- ``health``: the health probe of the compose stack (``python -m agentbus.service.health``).
"""

from agentbus.service.micro import (
    EXIT_CONNECTION_LOST,
    MicroService,
    ServiceMetrics,
    bad_messages_counter,
    connect_with_retry,
    publish_bad_message,
    report_bad_message,
    run_service,
)

__all__ = [
    "EXIT_CONNECTION_LOST",
    "MicroService",
    "ServiceMetrics",
    "bad_messages_counter",
    "connect_with_retry",
    "publish_bad_message",
    "report_bad_message",
    "run_service",
]
