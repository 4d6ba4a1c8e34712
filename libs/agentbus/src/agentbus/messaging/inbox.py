"""The agent's side of direct messages and broadcasts: ``Mailbox``.

Direct messages: one durable pull consumer per agent id (``inbox-<agent_id>``,
filter ``<p>.inbox.<agent_id>.*``) on the WorkQueue stream ``<P>_INBOX``; messages sent
while the agent was down wait there until it is back or their TTL ends. For each
message, the handler runs (its ack wait renewed every third of
``message_ack_wait_s``), then the agent stores a ``MessageReceipt`` on
``<p>.inbox.receipts.<agent_id>.<message_id>`` and only then acks or terminates:

* handler returned: ``delivered``, ack (the message leaves the stream);
* handler raised: nak with backoff (``agentbus.retry.backoff_s``) up to
  ``message_max_deliveries`` deliveries, then ``failed``, term and an ``ErrorEvent``;
* payload does not decode: ``rejected``, term and an ``ErrorEvent`` at once;
* delivered past its ``Agentbus-Expires-At``: ``expired``, term, handler not run;
* a sender token (the subject's last) naming an agent other than ``Agentbus-Source``:
  ``rejected``, term and an ``ErrorEvent`` (a broadcast: dropped, ``ErrorEvent``).

A receipt that cannot be stored leaves the message unacked: it comes back after the
ack wait (at-least-once; a handler may see a message twice, ``ctx.delivery`` > 1).

Broadcasts: a core-NATS subscription per capability on ``<p>.broadcast.<capability>.*``
(no queue group: every agent hears it); handled once, an error is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus.consumers import ensure_consumer
from agentbus.messages import ErrorInfo, MessageReceipt, ReceiptOutcome, encode, utcnow
from agentbus.messaging import wire
from agentbus.messaging.context import MessageContext, MessageHandler
from agentbus.names import Names
from agentbus.retry import backoff_s, error_info

if TYPE_CHECKING:
    from prometheus_client import Counter

    from agentbus.bus import Bus
    from agentbus.names import Names
    from agentbus.settings import AgentSettings

OnBad = Callable[[str, str], Awaitable[None]]


class Mailbox:
    """Runs ``handler`` for the agent's direct messages and its capabilities' broadcasts."""

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str,
        capabilities: Iterable[str],
        settings: AgentSettings,
        handler: MessageHandler,
        on_bad: OnBad,
        counted: Counter,
    ) -> None:
        self.bus = bus
        self.agent_id = agent_id
        self.capabilities = list(capabilities)
        self.settings = settings
        self._handler = handler
        self._decode = wire.decoder(wire.payload_type(handler))
        self._on_bad = on_bad
        self._counted = counted
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        self._psub: Any = None

    async def start(self) -> None:
        """Create (or update) the inbox consumer, subscribe to broadcasts, start pulling."""
        bus, names, s = self.bus, self.bus.names, self.settings
        durable = names.inbox_consumer(self.agent_id)
        config = inbox_consumer_config(names, self.agent_id, s, bus.settings.inbox_max_age_s)
        await ensure_consumer(bus, names.inbox_stream, config)
        self._psub = await bus.js.pull_subscribe_bind(durable, stream=names.inbox_stream)
        for capability in self.capabilities:
            self._subs.append(
                await bus.nc.subscribe(names.broadcast_filter(capability), cb=self._heard)
            )
        self._loop = asyncio.create_task(self._pull(self._psub))

    async def close(self, grace_s: float) -> None:
        """Stop pulling and hearing; let handlers finish for ``grace_s``, nak the rest."""
        self._stopping = True
        self._slot_free.set()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._psub is not None:  # an open pull subscription stalls the drain on close
            with contextlib.suppress(nats.errors.Error):
                await self._psub.unsubscribe()
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- direct messages ---------------------------------------------------------------
    async def _pull(self, sub: Any) -> None:
        limit = self.settings.message_concurrency
        while not self._stopping:
            free = limit - sum(1 for t in self._in_flight if t.get_name() == "direct")
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                msgs = await sub.fetch(free, timeout=self.settings.fetch_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except Exception as exc:  # connection trouble: nats-py reconnects by itself
                logger.warning("inbox pull failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._spawn(self._direct(msg), "direct")

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        task.set_name(name)
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            self._slot_free.set()
            if not t.cancelled() and (exc := t.exception()) is not None:
                logger.opt(exception=exc).error("message handling failed", task=name)

        task.add_done_callback(done)

    async def _direct(self, msg: Msg) -> None:
        headers = msg.headers or {}
        message_id = headers.get(wire.MSG_ID) or f"seq-{msg.metadata.sequence.stream}"
        delivery = msg.metadata.num_delivered or 1
        expires_at = wire.parse_time(headers.get(wire.EXPIRES_AT))
        with logger.contextualize(message_id=message_id, delivery=delivery):
            if expires_at is not None and utcnow() >= expires_at:
                logger.info("direct message expired before it was handled")
                await self._settle(msg, message_id, "expired", delivery, None)
                return
            try:
                value = self._decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                reason = f"direct message {message_id} does not decode: {exc}"
                error = ErrorInfo(error_type=type(exc).__name__, message=str(exc))
                await self._settle(msg, message_id, "rejected", delivery, error)
                await self._on_bad(msg.subject, reason)
                return
            if (forged := _forged(msg.subject, headers)) is not None:
                error = ErrorInfo(error_type="ForbiddenError", message=forged)
                await self._settle(msg, message_id, "rejected", delivery, error)
                await self._on_bad(msg.subject, f"direct message {message_id}: {forged}")
                return
            ctx = self._context(headers, "direct", message_id, delivery)
            try:
                async with _renewing(msg, self.settings.message_ack_wait_s / 3):
                    await self._handler(ctx, value)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await msg.nak()  # stopping: it comes back when the agent does
                raise
            except Exception as exc:
                await self._failed(msg, message_id, delivery, exc)
                return
            await self._settle(msg, message_id, "delivered", delivery, None)

    async def _failed(self, msg: Msg, message_id: str, delivery: int, exc: Exception) -> None:
        logger.opt(exception=exc).info("message handler failed")
        if delivery < self.settings.message_max_deliveries:
            self._counted.labels("direct", "retried").inc()
            with contextlib.suppress(Exception):  # no nak: it comes back after the ack wait
                await msg.nak(delay=backoff_s(None, delivery))
            return
        error = error_info(exc)
        await self._settle(msg, message_id, "failed", delivery, error)
        reason = (
            f"direct message {message_id}: handler failed on all {delivery} deliveries, "
            f"last {error.error_type}: {error.message}"
        )
        await self._on_bad(msg.subject, reason)

    async def _settle(
        self,
        msg: Msg,
        message_id: str,
        outcome: ReceiptOutcome,
        delivery: int,
        error: ErrorInfo | None,
    ) -> None:
        """Store the receipt, then ack (``delivered``) or term the message."""
        receipt = MessageReceipt(
            message_id=message_id,
            agent_id=self.agent_id,
            outcome=outcome,
            at=utcnow(),
            deliveries=delivery,
            error=error,
        )
        names = self.bus.names
        try:
            await self.bus.js.publish(
                names.inbox_receipt_subject(self.agent_id, message_id),
                encode(receipt),
                msg_ttl=int(self.bus.settings.inbox_receipt_ttl_s),
            )
            await (msg.ack() if outcome == "delivered" else msg.term())
        except Exception as exc:  # unacked: redelivered after the ack wait
            logger.warning("could not settle direct message", outcome=outcome, error=repr(exc))
            return
        self._counted.labels("direct", outcome).inc()

    # -- broadcasts --------------------------------------------------------------------
    async def _heard(self, msg: Msg) -> None:
        if not self._stopping:
            self._spawn(self._broadcast(msg), "broadcast")

    async def _broadcast(self, msg: Msg) -> None:
        headers = msg.headers or {}
        capability = msg.subject.split(".")[2]  # <p>.broadcast.<capability>.<sender>
        message_id = headers.get(wire.MESSAGE_ID, "")
        if (forged := _forged(msg.subject, headers)) is not None:
            self._counted.labels("broadcast", "rejected").inc()
            await self._on_bad(msg.subject, f"broadcast {message_id}: {forged}")
            return
        try:
            value = self._decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._counted.labels("broadcast", "rejected").inc()
            await self._on_bad(msg.subject, f"broadcast {message_id} does not decode: {exc}")
            return
        ctx = self._context(headers, "broadcast", message_id, 1, capability)
        try:
            await self._handler(ctx, value)
        except Exception:
            self._counted.labels("broadcast", "failed").inc()
            logger.exception("broadcast handler failed", message_id=message_id)
            return
        self._counted.labels("broadcast", "delivered").inc()

    def _context(
        self,
        headers: dict[str, str],
        kind: Any,
        message_id: str,
        delivery: int,
        capability: str | None = None,
    ) -> MessageContext:
        return MessageContext(
            kind=kind,
            message_id=message_id,
            source=headers.get(wire.SOURCE, ""),
            agent_id=self.agent_id,
            bus=self.bus,
            delivery=delivery,
            sent_at=wire.parse_time(headers.get(wire.SENT_AT)),
            capability=capability,
        )


def _forged(subject: str, headers: dict[str, str]) -> str | None:
    """Why a message's ``Agentbus-Source`` is not its subject's sender token, or None.

    The last token is the sending agent's id, or ``Names.CLIENT_SENDER`` for a client
    (whose source is then its own claim, any name).
    """
    sender, source = subject.rsplit(".", 1)[-1], headers.get(wire.SOURCE, "")
    if sender == Names.CLIENT_SENDER or sender == source:
        return None
    return f"source {source!r} sent on the subject of agent {sender!r}"


@contextlib.asynccontextmanager
async def _renewing(msg: Msg, every_s: float) -> Any:
    """Renew ``msg``'s ack wait (``in_progress``) every ``every_s`` while the block runs."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await msg.in_progress()
            except Exception as exc:
                logger.warning("ack wait renewal failed", error=repr(exc))

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def inbox_consumer_config(
    names: Names, agent_id: str, settings: AgentSettings, inbox_max_age_s: float
) -> ConsumerConfig:
    """The durable consumer of ``agent_id``'s inbox (``docs/protocol.md``, "Direct messages").

    Also what a supervisor provisions for a replica that may not create it.
    """
    durable = names.inbox_consumer(agent_id)
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=names.inbox_filter(agent_id),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.message_ack_wait_s,
        max_deliver=settings.message_max_deliveries,
        max_ack_pending=settings.message_concurrency,
        inactive_threshold=inbox_max_age_s,
    )
