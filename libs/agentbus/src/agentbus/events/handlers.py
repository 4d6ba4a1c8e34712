"""The events side of ``Agent``: ``@agent.on_event`` and the agent's subscriptions.

``Agent`` inherits ``EventHandlers``; its run loop calls ``start_events`` before it
takes tasks and ``close_events`` when it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agentbus.errors import ContractError
from agentbus.events.routes import EventHandler, EventRoute, Start, event_route
from agentbus.events.subscriptions import Subscriptions
from agentbus.messages import SubscriptionMode

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agentbus.bus import Bus
    from agentbus.settings import AgentSettings


class EventHandlers:
    """Event handler declarations of an agent, and its running subscriptions."""

    def __init__(self) -> None:
        self._event_routes: list[EventRoute] = []
        self.subscriptions: Subscriptions | None = None
        """The running event subscriptions, once started (None without handlers)."""

    def on_event(
        self,
        pattern: str,
        *,
        mode: SubscriptionMode = "shared",
        start: Start = "new",
        name: str | None = None,
        max_deliveries: int = 5,
        max_in_flight: int = 64,
    ) -> Callable[[EventHandler], EventHandler]:
        """Register ``async def fn(ctx: EventContext, payload)`` for events on ``pattern``.

        ``pattern`` is a topic with NATS wildcards (``review.>``). ``mode``: ``shared``
        (the deployment gets each event once, spread over its replicas) or ``each``
        (every replica gets every event). ``start`` (``new``, ``all``, a stream
        sequence or a time) applies when the subscription's consumers are first made.
        ``name`` (default: the function's name) names the durable consumers. Keyless
        events run up to ``max_in_flight`` at once; keyed ones one at a time per
        partition. The payload decodes as the annotation of ``fn``'s second parameter.
        Acks, retries (``max_deliveries``) and poison: ``agentbus.events.subscriptions``.

        Raises:
            ContractError: a bad argument, or the name is already subscribed.
        """

        def register(fn: EventHandler) -> EventHandler:
            r = event_route(
                pattern,
                fn,
                mode=mode,
                start=start,
                name=name,
                max_deliveries=max_deliveries,
                max_in_flight=max_in_flight,
            )
            if any(other.name == r.name for other in self._event_routes):
                raise ContractError(f"subscription name {r.name!r} is already used")
            self._event_routes.append(r)
            return fn

        return register

    async def start_events(
        self,
        bus: Bus,
        settings: AgentSettings,
        *,
        agent_id: str,
        name: str,
        on_bad: Callable[[str, str], Awaitable[None]],
        registry: Callable[[], CollectorRegistry],
    ) -> None:
        """Start the subscriptions of the declared handlers, if any.

        The deployment (``settings.deployment``, else the agent ``name``) owns the
        shared consumers; the lease is the ack wait.

        Raises:
            nats.js.errors.Error: a consumer could not be made (``Subscriptions.start``).
        """
        if not self._event_routes:
            return
        self.subscriptions = Subscriptions(
            bus,
            self._event_routes,
            agent_id=agent_id,
            deployment=settings.deployment or name,
            ack_wait_s=settings.lease_s,
            fetch_timeout_s=settings.events_pull_s,
            on_bad=on_bad,
            registry=registry,
        )
        await self.subscriptions.start()

    def close_events(self, grace_s: float) -> asyncio.Task[None] | None:
        """Start stopping the subscriptions (``grace_s`` for running handlers); await it."""
        subs = self.subscriptions
        return asyncio.create_task(subs.close(grace_s)) if subs is not None else None
