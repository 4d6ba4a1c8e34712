"""What a message or ask handler gets besides the payload: ``MessageContext``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from agentbus.messaging.sending import Messaging

if TYPE_CHECKING:
    from agentbus.bus import Bus

MessageKind = Literal["direct", "broadcast", "ask"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageContext(Messaging):
    """The message a handler runs for, and the agent's connection to answer with.

    ``send``, ``broadcast`` and ``ask`` (``Messaging``) send as this agent.

    Attributes:
        kind: ``direct`` (``send``: stored, retried), ``broadcast`` or ``ask``.
        message_id: ``Nats-Msg-Id`` of a direct message, ``Agentbus-Message-Id`` else.
        source: who sent it (``Agentbus-Source``): an agent id or a client's name.
        agent_id: the agent handling it.
        bus: the agent's connection.
        delivery: 1-based delivery number (direct messages are redelivered after a
            handler error; the others are delivered once).
        sent_at: when it was sent (``Agentbus-Sent-At``), if the sender said.
        capability: the capability a broadcast or an ask was addressed to.
    """

    kind: MessageKind
    message_id: str
    source: str
    agent_id: str
    bus: Bus
    delivery: int = 1
    sent_at: datetime | None = None
    capability: str | None = None

    @property
    def message_source(self) -> str:
        """This agent's id: what the messages its handler sends say as their source."""
        return self.agent_id

    @property
    def message_sender(self) -> str:
        """This agent's id: the sender token of the subjects its handler sends on."""
        return self.agent_id


MessageHandler = Callable[[MessageContext, Any], Awaitable[None]]
"""``async def fn(ctx: MessageContext, payload) -> None``: ``@agent.on_message``."""

AskHandler = Callable[[MessageContext, Any], Awaitable[Any]]
"""``async def fn(ctx: MessageContext, payload) -> reply``: ``@agent.on_ask(capability)``."""
