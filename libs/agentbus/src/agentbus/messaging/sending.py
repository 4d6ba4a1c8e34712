"""The sender's side: ``send`` to one agent, ``broadcast`` to a capability, ``ask``.

* ``send_message`` stores the payload on ``<p>.inbox.<agent_id>.<sender>`` in ``<P>_INBOX``
  with ``Nats-TTL`` = ``ttl_s``: the agent's durable inbox consumer gets it now, or
  when the agent is back, until the TTL ends. The outcome comes as a
  ``MessageReceipt`` the agent stores on ``<p>.inbox.receipts.<agent_id>.<message_id>`` before it
  acks; ``message_outcome`` concludes ``expired`` when the TTL ended, the message is
  no longer stored and the agent's consumer does not hold it unacked.
* ``broadcast`` publishes on core NATS ``<p>.broadcast.<capability>.<sender>``: only the
  agents live now hear it (nothing is stored, nothing is retried).
* ``ask`` is a request on ``<p>.agents.ask.<capability>`` answered by one agent of
  the queue group ``ask``: fast, not durable; a task is the durable, retried way.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors

from agentbus.bus.requests import raw_request
from agentbus.errors import ContractError
from agentbus.messages import AgentInfo, MessageReceipt, SendReceipt, utcnow
from agentbus.messaging import wire
from agentbus.names import Names, check_task_id, check_token

if TYPE_CHECKING:
    from agentbus.bus import Bus

DEFAULT_TTL_S = 300
"""How long a direct message waits for its agent by default, seconds."""
POLL_S = 0.5
"""How often a waiting sender looks at the stream once the TTL has ended."""


def _receipt(sent: SendReceipt, got: MessageReceipt) -> SendReceipt:
    return msgspec.structs.replace(sent, outcome=got.outcome, error=got.error, at=got.at)


async def send_message(
    bus: Bus,
    agent_id: str,
    payload: Any,
    *,
    source: str,
    sender: str = Names.CLIENT_SENDER,
    ttl_s: int = DEFAULT_TTL_S,
    wait_s: float = 0.0,
    message_id: str | None = None,
) -> SendReceipt:
    """Store ``payload`` for agent ``agent_id`` for ``ttl_s`` seconds; its receipt.

    With ``wait_s`` > 0, wait up to that long for the outcome (``delivered``,
    ``failed``, ``rejected``, ``expired``); else, or if none came in time, the
    receipt says ``pending``. ``sender`` is the sending agent's id (then equal to
    ``source``) or ``Names.CLIENT_SENDER``: the subject's last token.

    Raises:
        ContractError: ``agent_id`` or ``message_id`` is invalid, ``ttl_s`` is not a
            whole number of seconds in ``1..inbox_max_age_s``, or the payload does
            not encode.
        UnavailableError, RequestTimeoutError: the stream did not store it.
    """
    check_token("agent id", agent_id)
    message_id = check_task_id(message_id, "message id") if message_id else uuid.uuid4().hex
    limit = bus.settings.inbox_max_age_s
    if not isinstance(ttl_s, int) or not 1 <= ttl_s <= limit:
        raise ContractError(f"ttl_s must be whole seconds in 1..{limit:.0f}, got {ttl_s!r}")
    body = wire.encode_payload(payload)
    sent_at = utcnow()
    expires_at = sent_at + timedelta(seconds=ttl_s)
    headers = {
        wire.MSG_ID: message_id,
        wire.SOURCE: source,
        wire.PAYLOAD_TYPE: wire.type_name(payload),
        wire.SENT_AT: sent_at.isoformat(),
        wire.EXPIRES_AT: expires_at.isoformat(),
    }
    names = bus.names
    receipts = None
    if wait_s > 0:  # subscribe before the message can be handled
        receipts = await bus.nc.subscribe(
            names.inbox_receipt_subject(agent_id, message_id), max_msgs=1
        )
    try:
        ack = await bus.js.publish(
            names.inbox_subject(agent_id, sender), body, headers=headers, msg_ttl=ttl_s
        )
        sent = SendReceipt(
            message_id=message_id,
            agent_id=agent_id,
            seq=ack.seq,
            sent_at=sent_at,
            expires_at=expires_at,
            duplicate=bool(ack.duplicate),
        )
        if receipts is None:
            return sent
        return await _wait(bus, sent, receipts, wait_s)
    finally:
        if receipts is not None:
            await _unsubscribe(receipts)


async def _unsubscribe(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except nats.errors.Error:  # already gone (max_msgs reached) or connection closed
        pass


async def _wait(bus: Bus, sent: SendReceipt, receipts: Any, wait_s: float) -> SendReceipt:
    """Wait up to ``wait_s`` for the receipt or the conclusion ``expired``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (left := deadline - loop.time()) > 0:
        until_expiry = (sent.expires_at - utcnow()).total_seconds()
        try:
            msg = await receipts.next_msg(timeout=min(left, max(until_expiry, POLL_S)))
        except (nats.errors.TimeoutError, TimeoutError):
            if until_expiry <= 0 and (now := await message_outcome(bus, sent)).outcome != "pending":
                return now
            continue
        try:
            return _receipt(sent, wire.decode_receipt(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not a receipt: look in the stream below
    return await message_outcome(bus, sent)


async def message_outcome(bus: Bus, sent: SendReceipt) -> SendReceipt:
    """``sent`` with the outcome known now (one look, no waiting).

    The stored ``MessageReceipt``, if any; else ``expired`` once the TTL has ended,
    the message is no longer stored and the agent's inbox consumer does not hold it
    unacked (never delivered, or nothing pending); else ``pending``.
    """
    names = bus.names
    expired = sent.expires_at <= utcnow() and not await _held(bus, sent)
    try:  # after the check above: an agent stores its receipt before it acks
        stored = await bus.js.get_msg(
            names.inbox_stream,
            subject=names.inbox_receipt_subject(sent.agent_id, sent.message_id),
            direct=True,
        )
    except nats.js.errors.NotFoundError:
        stored = None
    if stored is not None and stored.data:
        try:
            return _receipt(sent, wire.decode_receipt(stored.data))
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    return msgspec.structs.replace(sent, outcome="expired") if expired else sent


async def _held(bus: Bus, sent: SendReceipt) -> bool:
    """Whether the message may still be handled: stored, or delivered and unacked."""
    names = bus.names
    try:
        if bus.provisioned:  # may read only the last message it sent to that agent
            own = names.inbox_subject(sent.agent_id, bus.agent_id or names.CLIENT_SENDER)
            last = await bus.js.get_msg(names.inbox_stream, subject=own, direct=True)
            if (last.seq or 0) >= sent.seq:  # a later one is stored: assume it is too
                return True
        else:
            await bus.js.get_msg(names.inbox_stream, sent.seq)
            return True
    except nats.js.errors.NotFoundError:
        pass
    try:
        info = await bus.js.consumer_info(names.inbox_stream, names.inbox_consumer(sent.agent_id))
    except nats.js.errors.NotFoundError:
        return False
    delivered = info.delivered.stream_seq if info.delivered else 0
    return bool(info.num_ack_pending) and (delivered or 0) >= sent.seq


async def broadcast(
    bus: Bus, capability: str, payload: Any, *, source: str, sender: str = Names.CLIENT_SENDER
) -> int:
    """Publish ``payload`` to every live agent of ``capability``; how many there are.

    The count is of the agents the registry lists with ``capability`` (not
    ``stopping``); the publish itself is core NATS: not stored, not acknowledged.

    Raises:
        ContractError: ``capability`` is invalid or the payload does not encode.
    """
    from agentbus.kv.replay import replay

    check_token("capability", capability)
    body = wire.encode_payload(payload)
    headers = {
        wire.MESSAGE_ID: uuid.uuid4().hex,
        wire.SOURCE: source,
        wire.PAYLOAD_TYPE: wire.type_name(payload),
        wire.SENT_AT: utcnow().isoformat(),
    }
    await bus.nc.publish(bus.names.broadcast_subject(capability, sender), body, headers=headers)
    agents = await replay(await bus.kv(bus.names.agents_bucket), AgentInfo)
    return sum(
        1 for a in agents.values() if capability in a.capabilities and a.status != "stopping"
    )


async def ask(
    bus: Bus,
    capability: str,
    payload: Any,
    *,
    source: str,
    timeout_s: float | None = None,
    reply_type: Any = Any,
) -> Any:
    """Ask one agent of ``capability`` (``@agent.on_ask``); its reply as ``reply_type``.

    Raises:
        ContractError: ``capability`` is invalid, the payload does not encode, the
            reply does not decode as ``reply_type``, or the agent refused the payload
            (code 400).
        UnavailableError: no agent answers ``capability``.
        RequestTimeoutError: no reply within ``timeout_s`` (default: the bus's).
        AgentBusError: the handler raised: the error of its code (500 for an error
            that is not an ``AgentBusError``; the message names its type).
    """
    check_token("capability", capability)
    body = wire.encode_payload(payload)
    headers = {
        wire.MESSAGE_ID: uuid.uuid4().hex,
        wire.SOURCE: source,
        wire.PAYLOAD_TYPE: wire.type_name(payload),
        wire.SENT_AT: utcnow().isoformat(),
    }
    subject = bus.names.ask_subject(capability)
    msg = await raw_request(
        bus,
        subject,
        body,
        timeout_s=timeout_s,
        headers=headers,
        nobody=f"no agent of capability {capability!r} answers",
    )
    try:
        return msgspec.json.decode(msg.data, type=reply_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"reply on {subject!r} does not decode: {exc}") from exc


class Messaging:
    """``send``, ``broadcast``, ``ask`` and ``message_outcome`` on ``self.bus``.

    Mixed into ``Client``, ``TaskContext`` and ``MessageContext``; ``message_source``
    is what ``Agentbus-Source`` says (an agent id, or the connection's name).
    """

    __slots__ = ()
    bus: Bus

    @property
    def message_source(self) -> str:
        """Who this sends as: ``Agentbus-Source``."""
        return str(self.bus.nc.options.get("name") or "client")

    @property
    def message_sender(self) -> str:
        """The sender token of the subjects this sends on: ``Names.CLIENT_SENDER``.

        An agent's contexts say its agent id (equal to ``message_source``).
        """
        return Names.CLIENT_SENDER

    async def send(
        self,
        agent_id: str,
        payload: Any,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        wait_s: float = 0.0,
        message_id: str | None = None,
    ) -> SendReceipt:
        """Send ``payload`` to agent ``agent_id`` (``@agent.on_message``), held ``ttl_s``.

        Returns a ``SendReceipt``; with ``wait_s`` > 0 it carries the outcome if one
        came within ``wait_s`` seconds (else ``pending``). Errors: ``send_message``.
        """
        return await send_message(
            self.bus,
            agent_id,
            payload,
            source=self.message_source,
            sender=self.message_sender,
            ttl_s=ttl_s,
            wait_s=wait_s,
            message_id=message_id,
        )

    async def message_outcome(self, receipt: SendReceipt) -> SendReceipt:
        """``receipt`` with the outcome known now (``messaging.sending.message_outcome``)."""
        return await message_outcome(self.bus, receipt)

    async def broadcast(self, capability: str, payload: Any) -> int:
        """Send ``payload`` to every live agent of ``capability``; how many (``broadcast``)."""
        return await broadcast(
            self.bus,
            capability,
            payload,
            source=self.message_source,
            sender=self.message_sender,
        )

    async def ask(
        self,
        capability: str,
        payload: Any,
        *,
        timeout_s: float | None = None,
        reply_type: Any = Any,
    ) -> Any:
        """Ask one agent of ``capability`` and return its reply. Errors: ``ask``."""
        return await ask(
            self.bus,
            capability,
            payload,
            source=self.message_source,
            timeout_s=timeout_s,
            reply_type=reply_type,
        )
