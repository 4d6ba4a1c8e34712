"""Direct messages between agents: the receipt an agent stores, the sender's view.

The message itself is the sender's payload (msgspec JSON) with its metadata in
headers (``docs/protocol.md``, "Direct messages, broadcast and ask"); these Structs
are what the bus adds around it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from agentbus.messages.common import ErrorInfo, Message

ReceiptOutcome = Literal["delivered", "failed", "rejected", "expired"]
"""What became of a direct message, as its receiving agent reports it.

``delivered``: the handler returned. ``failed``: the handler raised on every one of
its deliveries. ``rejected``: the payload did not decode. ``expired``: the message
reached the agent after its TTL ended and was not handled.
"""

SendOutcome = Literal["pending", "delivered", "failed", "rejected", "expired"]
"""A sender's view: a ``ReceiptOutcome``, or ``pending`` (held, or being handled).

``expired`` is also concluded by the sender itself: the TTL ended, the message is no
longer stored and the agent's inbox consumer does not hold it.
"""


class MessageReceipt(Message, frozen=True, kw_only=True):
    """Stored on ``<p>.inbox.receipts.<agent_id>.<message_id>`` by the agent that settled a message.

    Published (JetStream, ``Nats-TTL`` = ``BusSettings.inbox_receipt_ttl_s``) before
    the message is acked or terminated, so a sender that waits hears it live and one
    that asks later reads it from the stream.
    """

    message_id: str
    agent_id: str
    """The receiving agent."""
    outcome: ReceiptOutcome
    at: datetime
    deliveries: int = 1
    """Deliveries of the message to the agent, including this last one."""
    error: ErrorInfo | None = None
    """Why, for ``failed`` and ``rejected``."""


class SendReceipt(Message, frozen=True, kw_only=True):
    """What ``send`` returns: where the message is and, once known, its outcome.

    ``outcome`` is ``pending`` until a ``MessageReceipt`` arrives or the sender
    concludes ``expired``; ``send(..., wait_s=)`` waits up to that long for it and
    ``message_outcome(receipt)`` looks again later.
    """

    message_id: str
    agent_id: str
    """The agent the message is addressed to."""
    seq: int
    """Stream sequence of the message in ``<P>_INBOX``."""
    sent_at: datetime
    expires_at: datetime
    """When its TTL ends: unread by then, it is gone."""
    outcome: SendOutcome = "pending"
    duplicate: bool = False
    """The stream already held a message with this ``message_id`` (a retried send)."""
    error: ErrorInfo | None = None
    at: datetime | None = None
    """When the outcome was reached (the receipt's time), if known."""

    @property
    def delivered(self) -> bool:
        """Whether the receiving agent's handler returned."""
        return self.outcome == "delivered"

    @property
    def expired(self) -> bool:
        """Whether the TTL ended before any agent handled the message."""
        return self.outcome == "expired"


MESSAGES: tuple[type[Message], ...] = (MessageReceipt, SendReceipt)
