"""Embedded mode: nats-server and the five services as local processes, one command.

- ``stack``: ``EmbeddedStack`` starts and stops them;
- ``auth``: their credentials (authentication is on by default);
- ``state``: the state file through which other ``agentbus`` commands find a running
  stack (one live stack per file).
"""

from agentbus.embedded.processes import free_port
from agentbus.embedded.stack import NODE_ID, SERVICES, EmbeddedStack, ping_services
from agentbus.embedded.state import EmbeddedState, read_state

__all__ = [
    "NODE_ID",
    "SERVICES",
    "EmbeddedStack",
    "EmbeddedState",
    "free_port",
    "ping_services",
    "read_state",
]
