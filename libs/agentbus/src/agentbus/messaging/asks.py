"""The agent's side of ``ask``: a ``nats.micro`` service with one endpoint per capability.

Each ``@agent.on_ask(capability)`` handler serves ``<p>.agents.ask.<capability>`` in
queue group ``ask`` (one agent of the group answers each request), as endpoint
``ask-<capability>`` of the agent's service ``agentbus-agent`` (``nats micro ls``
lists it, with request and error counts). Errors travel back as a service's do: the
``Nats-Service-Error-Code`` header (an ``AgentBusError``'s code, ``500`` for any
other exception, ``400`` for a payload that does not decode) and
``Nats-Service-Error`` (the message; for a 500 prefixed by the exception's type).
Requests are handled concurrently (a task each: a micro endpoint runs its handler
one request at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from agentbus import __version__
from agentbus.errors import AgentBusError, ContractError
from agentbus.messaging import wire
from agentbus.messaging.context import AskHandler, MessageContext

if TYPE_CHECKING:
    from nats.micro.request import Request
    from nats.micro.service import Service
    from prometheus_client import Counter

    from agentbus.bus import Bus

SERVICE_NAME = "agentbus-agent"


class AskServer:
    """Answers ``ask`` requests for the capabilities in ``handlers``."""

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str,
        handlers: Mapping[str, AskHandler],
        on_bad: Callable[[str, str], Awaitable[None]],
        counted: Counter,
    ) -> None:
        self.bus = bus
        self.agent_id = agent_id
        self._handlers = dict(handlers)
        self._decoders = {c: wire.decoder(wire.payload_type(h)) for c, h in handlers.items()}
        self._on_bad = on_bad
        self._counted = counted
        self._svc: Service | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Register the service and its endpoints."""
        from nats.micro import add_service

        names = self.bus.names
        self._svc = await add_service(
            self.bus.nc,
            name=SERVICE_NAME,
            version=__version__,
            description="agentbus agent: ask endpoints",
            metadata={"prefix": names.prefix, "agent_id": self.agent_id},
        )
        for capability in self._handlers:
            await self._svc.add_endpoint(
                name=f"ask-{capability}",
                subject=names.ask_subject(capability),
                queue_group=names.ASK_QUEUE,
                handler=self._endpoint(capability),
            )

    async def close(self, grace_s: float) -> None:
        """Stop answering; let answers in progress finish for ``grace_s`` seconds."""
        if self._svc is not None:
            with contextlib.suppress(Exception):
                await self._svc.stop()
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _endpoint(self, capability: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            task = asyncio.create_task(self._answer(capability, req))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        return handle

    async def _answer(self, capability: str, req: Request) -> None:
        headers = req.headers or {}
        message_id = headers.get(wire.MESSAGE_ID, "")
        try:
            value = self._decoders[capability](req.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"ask {message_id} for {capability!r} does not decode: {exc}"
            self._counted.labels("ask", "rejected").inc()
            await self._on_bad(req.subject, reason)
            await self._respond_error(req, ContractError.code, reason)
            return
        ctx = MessageContext(
            kind="ask",
            message_id=message_id,
            source=headers.get(wire.SOURCE, ""),
            agent_id=self.agent_id,
            bus=self.bus,
            sent_at=wire.parse_time(headers.get(wire.SENT_AT)),
            capability=capability,
        )
        try:
            reply = wire.encode_payload(await self._handlers[capability](ctx, value))
        except AgentBusError as exc:
            self._counted.labels("ask", "failed").inc()
            logger.info("ask refused", capability=capability, code=exc.code, error=str(exc))
            await self._respond_error(req, exc.code, str(exc))
            return
        except Exception as exc:
            self._counted.labels("ask", "failed").inc()
            logger.opt(exception=exc).info("ask handler failed", capability=capability)
            await self._respond_error(req, AgentBusError.code, f"{type(exc).__name__}: {exc}")
            return
        try:
            await req.respond(reply)
        except Exception as exc:
            logger.warning("could not answer ask", error=repr(exc))
            return
        self._counted.labels("ask", "delivered").inc()

    @staticmethod
    async def _respond_error(req: Any, code: str, message: str) -> None:
        try:
            await req.respond_error(code, message[:1000].replace("\n", " "))
        except Exception as exc:
            logger.warning("could not answer ask", error=repr(exc))
