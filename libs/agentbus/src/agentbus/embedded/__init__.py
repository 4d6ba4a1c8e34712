"""Embedded mode: nats-server and the five services as local processes, one command.

- ``stack``: ``EmbeddedStack`` starts and stops them;
- ``auth``: their credentials (authentication is on by default);
- ``state``: the state file through which other ``agentbus`` commands find a running
  stack (one live stack per file).

Names are resolved lazily (PEP 562 ``__getattr__``): a CLI command that only reads the
state file does not import the stack, its credentials code and their JWT libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentbus._exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "NODE_ID": "agentbus.embedded.stack",
    "SERVICES": "agentbus.embedded.stack",
    "EmbeddedStack": "agentbus.embedded.stack",
    "ping_services": "agentbus.embedded.processes",
    "free_port": "agentbus.embedded.processes",
    "EmbeddedState": "agentbus.embedded.state",
    "read_state": "agentbus.embedded.state",
}

__all__ = [
    "NODE_ID",
    "SERVICES",
    "EmbeddedStack",
    "EmbeddedState",
    "free_port",
    "ping_services",
    "read_state",
]

if TYPE_CHECKING:
    from agentbus.embedded.processes import free_port, ping_services
    from agentbus.embedded.stack import NODE_ID, SERVICES, EmbeddedStack
    from agentbus.embedded.state import EmbeddedState, read_state


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
