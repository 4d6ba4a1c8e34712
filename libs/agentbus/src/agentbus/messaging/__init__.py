"""Agents talking to agents: direct messages, broadcasts and asks.

- ``sending``: the sender's side (``send``, ``message_outcome``, ``broadcast``,
  ``ask``) and ``Messaging``, the mixin that gives ``Client``, ``TaskContext`` and
  ``MessageContext`` those methods;
- ``inbox``: the agent's inbox consumer and broadcast subscriptions (``Mailbox``);
- ``asks``: the agent's ``nats.micro`` ask endpoints (``AskServer``);
- ``declared``: ``AgentMail``, an agent's handlers and their start and stop;
- ``context``: ``MessageContext``, what a message or ask handler gets;
- ``wire``: headers and bodies.

When to use which (``docs/architecture.md``, "Messages between agents"): a task for
work that must be done (durable, retried, recorded); ``send`` to tell one agent
something it must get even if it is down now (held up to a TTL, outcome known);
``broadcast`` for news every live agent of a capability may act on (not stored);
``ask`` for a quick answer from any agent of a capability (not stored, not retried).
"""

from agentbus.messaging.context import AskHandler, MessageContext, MessageHandler
from agentbus.messaging.sending import (
    DEFAULT_TTL_S,
    Messaging,
    ask,
    broadcast,
    message_outcome,
    send_message,
)

__all__ = [
    "DEFAULT_TTL_S",
    "AskHandler",
    "MessageContext",
    "MessageHandler",
    "Messaging",
    "ask",
    "broadcast",
    "message_outcome",
    "send_message",
]
