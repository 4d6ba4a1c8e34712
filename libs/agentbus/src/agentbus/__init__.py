"""agentbus: run fleets of AI agents in containers, cooperating over NATS JetStream.

The public surface, importable from the package itself::

    from agentbus import Agent, TaskContext, Client, Bus

- ``Agent``, ``TaskContext``: the agent runtime (handlers, leases, heartbeats);
- ``MessageContext``: what a message or ask handler gets (``agentbus.messaging``);
- ``EventContext``: what an event handler (``@agent.on_event``) gets;
- ``Client``: submit tasks and wait for them, from any process;
- ``Bus``: the NATS connection every part shares; ``Names`` derives every subject,
  stream and bucket name from a prefix;
- ``BusSettings``, ``AgentSettings``: configuration from the environment;
- the errors of ``agentbus.errors`` (``AgentBusError`` and its tree);
- the wire contract stays in ``agentbus.messages``.

Names are resolved lazily (PEP 562 ``__getattr__``): ``import agentbus`` imports
nothing else, so an agent's start-up and each service pay only for what they use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentbus._deferred import defer_all
from agentbus._exports import lazy_exports

__version__ = "0.1.0"

defer_all()  # aiohttp: only nats-py's WebSocket transport needs it (agentbus._deferred)

_EXPORTS: dict[str, str] = {
    "Agent": "agentbus.runtime",
    "TaskContext": "agentbus.runtime.context",
    "MessageContext": "agentbus.messaging",
    "EventContext": "agentbus.events",
    "Client": "agentbus.client",
    "Bus": "agentbus.bus",
    "Names": "agentbus.names",
    "BusSettings": "agentbus.settings",
    "AgentSettings": "agentbus.settings",
    "AgentBusError": "agentbus.errors",
    "ContractError": "agentbus.errors",
    "NotFoundError": "agentbus.errors",
    "ConflictError": "agentbus.errors",
    "UnavailableError": "agentbus.errors",
    "RequestTimeoutError": "agentbus.errors",
    "TaskError": "agentbus.errors",
    "RetryableTaskError": "agentbus.errors",
    "TaskTimeoutError": "agentbus.errors",
    "FatalTaskError": "agentbus.errors",
}

__all__ = [
    "Agent",
    "AgentBusError",
    "AgentSettings",
    "Bus",
    "BusSettings",
    "Client",
    "ConflictError",
    "ContractError",
    "EventContext",
    "FatalTaskError",
    "MessageContext",
    "Names",
    "NotFoundError",
    "RequestTimeoutError",
    "RetryableTaskError",
    "TaskContext",
    "TaskError",
    "TaskTimeoutError",
    "UnavailableError",
    "__version__",
]

if TYPE_CHECKING:
    from agentbus.bus import Bus
    from agentbus.client import Client
    from agentbus.errors import (
        AgentBusError,
        ConflictError,
        ContractError,
        FatalTaskError,
        NotFoundError,
        RequestTimeoutError,
        RetryableTaskError,
        TaskError,
        TaskTimeoutError,
        UnavailableError,
    )
    from agentbus.events import EventContext
    from agentbus.messaging import MessageContext
    from agentbus.names import Names
    from agentbus.runtime import Agent
    from agentbus.runtime.context import TaskContext
    from agentbus.settings import AgentSettings, BusSettings


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
