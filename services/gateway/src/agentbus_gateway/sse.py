"""Server-Sent Events that cannot grow the gateway's memory: paced sends and stream slots.

``PacedEvents`` is Litestar's ``ServerSentEvent`` whose body sends are timed: the
events come from a pull-based reader that fetches only after the previous event was
handed to the server (so one client holds at most one fetch batch), and a send the
client does not take within ``send_timeout_s`` (its TCP window and the server's
write buffer are full) ends the stream. The final ``event: error`` naming the reason
then gets ``final_grace_s`` to go out; a client that still reads nothing is
disconnected without it.

``StreamSlots`` caps the open streams per token and in all (429 and 503).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from litestar import Request
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse
from loguru import logger

from agentbus.errors import RateLimitedError, UnavailableError
from agentbus_gateway.metrics import GatewayMetrics

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
SlowClient = Callable[[], ServerSentEventMessage]
"""Called once when a client stopped taking data: counts, logs, and returns the final
event to send."""


class _StalledError(Exception):
    """A body send waited longer than the send timeout."""


class _PacedResponse:
    """The ASGI response of ``PacedEvents``: the streaming response with timed sends."""

    def __init__(
        self,
        inner: ASGIResponse,
        events: AsyncGenerator[ServerSentEventMessage, None],
        *,
        send_timeout_s: float,
        final_grace_s: float,
        on_slow: SlowClient,
        on_end: Callable[[], Awaitable[None]],
    ) -> None:
        self.inner = inner
        self.events = events
        self.send_timeout_s = send_timeout_s
        self.final_grace_s = final_grace_s
        self.on_slow = on_slow
        self.on_end = on_end

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            try:
                with anyio.fail_after(self.send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise _StalledError from None

        try:
            try:
                await self.inner(scope, receive, timed_send)  # type: ignore[arg-type]
            except* _StalledError:
                final = self.on_slow().encode()
                with anyio.move_on_after(self.final_grace_s):
                    await send({"type": "http.response.body", "body": final, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.events.aclose()
            await self.on_end()


class PacedEvents(ServerSentEvent):
    """A ``text/event-stream`` response of ``events`` with timed sends (module doc).

    ``on_end`` runs once the response is over, however it ended (release the slot,
    close the reader).
    """

    def __init__(
        self,
        events: AsyncGenerator[ServerSentEventMessage, None],
        *,
        send_timeout_s: float,
        final_grace_s: float,
        on_slow: SlowClient,
        on_end: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(events)
        self.events = events
        self.send_timeout_s = send_timeout_s
        self.final_grace_s = final_grace_s
        self.on_slow = on_slow
        self.on_end = on_end

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], **kwargs: Any) -> Any:
        """The streaming ASGI response, its body sends timed."""
        inner = super().to_asgi_response(app, request, **kwargs)
        return _PacedResponse(
            inner,
            self.events,
            send_timeout_s=self.send_timeout_s,
            final_grace_s=self.final_grace_s,
            on_slow=self.on_slow,
            on_end=self.on_end,
        )


class StreamSlots:
    """Counts open event streams per token and in all; refuses one over a cap.

    Attributes:
        per_token: most open streams of one token (0: no cap).
        total: most open streams of the gateway (0: no cap).
    """

    def __init__(self, *, per_token: int, total: int, metrics: GatewayMetrics) -> None:
        self.per_token = per_token
        self.total = total
        self.metrics = metrics
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Streams open now."""
        return self._open.total()

    def acquire(self, token_id: str) -> Callable[[], None]:
        """Take a slot for ``token_id``; returns the (idempotent) release.

        Raises:
            RateLimitedError: the token has ``per_token`` streams open (429).
            UnavailableError: the gateway has ``total`` streams open (503).
        """
        if self.total and self.open >= self.total:
            self._refused("gateway", token_id)
            raise UnavailableError(
                f"the gateway serves its limit of {self.total} event streams; retry later"
            )
        if self.per_token and self._open[token_id] >= self.per_token:
            self._refused("token", token_id)
            raise RateLimitedError(
                1,
                f"token {token_id} has its limit of {self.per_token} event streams open; "
                "close one (GATEWAY_SSE_MAX_STREAMS_PER_TOKEN)",
            )
        self._open[token_id] += 1
        self.metrics.sse_streams.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[token_id] -= 1
                if self._open[token_id] <= 0:
                    del self._open[token_id]
                self.metrics.sse_streams.dec()

        return release

    def _refused(self, limit: str, token_id: str) -> None:
        self.metrics.sse_refusals.labels(limit).inc()
        logger.warning("event stream refused", limit=limit, token_id=token_id, open=self.open)
