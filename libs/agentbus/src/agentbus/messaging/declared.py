"""An agent's message and ask handlers, and their life on the bus: ``AgentMail``.

``Agent.on_message`` and ``Agent.on_ask`` register here; ``Agent.run`` starts the
``Mailbox`` (direct messages, broadcasts) and the ``AskServer`` for what was
registered, and closes them when it stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from agentbus.errors import ContractError
from agentbus.messaging.asks import AskServer
from agentbus.messaging.context import AskHandler, MessageHandler
from agentbus.messaging.inbox import Mailbox
from agentbus.names import check_token

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agentbus.bus import Bus
    from agentbus.settings import AgentSettings

OnBad = Callable[[str], Callable[[str, str], Awaitable[None]]]
"""``on_bad(source)``: the bad-message reporter of a source (``inbox``, ``broadcast``,
``ask``)."""


class AgentMail:
    """The handlers an agent declared for messages and asks, and their runners."""

    def __init__(self) -> None:
        self.message_handler: MessageHandler | None = None
        self.ask_handlers: dict[str, AskHandler] = {}
        self._mailbox: Mailbox | None = None
        self._asks: AskServer | None = None

    def on_message(self, fn: MessageHandler) -> MessageHandler:
        """Register ``fn`` for direct messages and broadcasts.

        Raises:
            ContractError: a message handler is already registered.
        """
        if self.message_handler is not None:
            raise ContractError("the agent already has a message handler")
        self.message_handler = fn
        return fn

    def on_ask(self, capability: str) -> Callable[[AskHandler], AskHandler]:
        """Register the decorated handler for ``ask(capability, ...)``.

        Raises:
            ContractError: ``capability`` is not a valid token or already has one.
        """
        check_token("capability", capability)
        if capability in self.ask_handlers:
            raise ContractError(f"ask capability {capability!r} already has a handler")

        def register(fn: AskHandler) -> AskHandler:
            self.ask_handlers[capability] = fn
            return fn

        return register

    async def start(
        self,
        bus: Bus,
        *,
        agent_id: str,
        capabilities: Iterable[str],
        settings: AgentSettings,
        on_bad: OnBad,
        registry: CollectorRegistry,
    ) -> None:
        """Start receiving what handlers were registered for (nothing if none)."""
        if self.message_handler is None and not self.ask_handlers:
            return
        from prometheus_client import Counter

        counted = Counter(
            "agentbus_agent_messages_total",
            "Direct messages, broadcasts and asks handled, by kind and outcome "
            "(delivered, retried, failed, rejected, expired).",
            ["kind", "outcome"],
            registry=registry,
        )
        if self.message_handler is not None:
            self._mailbox = Mailbox(
                bus,
                agent_id=agent_id,
                capabilities=capabilities,
                settings=settings,
                handler=self.message_handler,
                on_bad=on_bad("inbox"),
                counted=counted,
            )
            await self._mailbox.start()
        if self.ask_handlers:
            self._asks = AskServer(
                bus,
                agent_id=agent_id,
                handlers=self.ask_handlers,
                on_bad=on_bad("ask"),
                counted=counted,
            )
            await self._asks.start()

    async def close(self, grace_s: float) -> None:
        """Stop receiving; handlers in progress get ``grace_s`` seconds to finish."""
        if self._asks is not None:
            await self._asks.close(grace_s)
            self._asks = None
        if self._mailbox is not None:
            await self._mailbox.close(grace_s)
            self._mailbox = None
