"""JetStream publishes with acks (and requests), many in flight, at little cost each.

``AckedPublisher.publish`` sends a message with a reply subject ``<inbox>.<n>`` of one
subscription and returns a future of its stream sequence, resolved when the stream's
ack arrives. It is nats-py's ``publish_async`` without what made it cost (measured in
``just bench tasks``, where the scheduler publishes three acked messages per task and
the agent one): no random token from ``os.urandom``, no semaphore, no timer and no
second future per message (``js.publish`` adds both through ``wait_for``), acks
decoded with msgspec. One sweep per ``timeout_s / 4`` fails the futures whose ack did
not come in time (``TimeoutError``), e.g. across a reconnect.

A compare-and-set write is a publish with ``Nats-Expected-Last-Subject-Sequence``; its
refusal raises ``nats.js.errors.KeyWrongLastSequenceError`` as ``KeyValue.update`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream error codes of a refused compare-and-set (``JSStreamWrongLastSequence*``)."""
_NO_RESPONDERS = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


def _failure(ack: _PubAck) -> Exception:
    err = ack.error
    assert err is not None
    if err.err_code in WRONG_LAST_SEQUENCE:
        return nats.js.errors.KeyWrongLastSequenceError(description=err.description)
    try:
        nats.js.errors.APIError.from_error(
            {"code": err.code, "err_code": err.err_code, "description": err.description}
        )
    except nats.js.errors.APIError as exc:
        return exc
    return nats.js.errors.APIError(code=err.code, description=err.description)  # pragma: no cover


class AckedPublisher:
    """Acked publishes and requests on one connection, matched to replies by subject."""

    def __init__(self, nc: Client, *, timeout_s: float) -> None:
        self._nc = nc
        self.timeout_s = timeout_s
        self._prefix = ""
        self._sub: Subscription | None = None
        self._next = 0
        # token -> (future, deadline, whether the future takes the raw reply)
        self._pending: dict[str, tuple[asyncio.Future[Any], float, bool]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to the ack inbox; idempotent."""
        if self._sub is None:
            self._prefix = self._nc.new_inbox() + "."
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def close(self) -> None:
        """Unsubscribe; acks still pending fail with ``TimeoutError``."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._expire(float("inf"))
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # closed connection: nothing to undo
                logger.debug("ack inbox unsubscribe failed", error=repr(exc))

    @property
    def pending(self) -> int:
        """Publishes whose ack has not come yet."""
        return len(self._pending)

    async def publish(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[int]:
        """Send ``payload`` to the stream on ``subject``; a future of its stream sequence.

        The future raises ``KeyWrongLastSequenceError`` (a refused compare-and-set),
        another ``nats.js.errors.APIError`` (refused), ``NoStreamResponseError`` (no
        stream takes the subject) or ``TimeoutError`` (no ack within ``timeout_s``).

        Raises:
            nats.errors.Error: the message could not be sent (connection closed).
        """
        future: asyncio.Future[int] = await self._send(subject, payload, headers, raw=False)
        return future

    async def request(
        self, subject: str, payload: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[Msg]:
        """Send a request; a future of the reply message as it came (status headers too).

        For requests whose reply is not an ack, e.g. a direct get
        (``$JS.API.DIRECT.GET.<stream>.<subject>``). The future raises ``TimeoutError``
        if no reply comes within ``timeout_s``.

        Raises:
            nats.errors.Error: the request could not be sent (connection closed).
        """
        future: asyncio.Future[Msg] = await self._send(subject, payload, headers, raw=True)
        return future

    async def _send(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None, *, raw: bool
    ) -> asyncio.Future[Any]:
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[token] = (future, loop.time() + self.timeout_s, raw)
        try:
            await self._nc.publish(
                subject,
                payload,
                reply=self._prefix + token,
                headers=dict(headers) if headers else None,
            )
        except BaseException:
            self._pending.pop(token, None)
            raise
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        return future

    async def _on_ack(self, msg: Msg) -> None:
        found = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if found is None or found[0].done():
            return  # expired already
        future, _, raw = found
        if raw:
            future.set_result(msg)
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = _decode_ack(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            future.set_exception(nats.js.errors.APIError(description=f"bad ack: {exc}"))
            return
        if ack.error is not None:
            future.set_exception(_failure(ack))
        else:
            future.set_result(ack.seq)

    def _expire(self, now: float) -> None:
        while self._pending:
            token, (future, deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                return  # deadlines grow with insertion order
            del self._pending[token]
            if not future.done():
                future.set_exception(TimeoutError(f"no ack within {self.timeout_s} s"))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(self.timeout_s / 4)
            self._expire(loop.time())
