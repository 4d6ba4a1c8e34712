"""Requests to the work stream: no-wait pulls, and which subjects hold messages.

Pull protocol details (nats-server 2.15, checked in a probe): a no-wait request is
answered with up to ``batch`` messages; when fewer were available a status message
``404 No Messages`` ends the reply; when exactly ``batch`` were delivered, no status
follows. With ``expires`` too, an empty consumer holds the request until the first
message (then ``404`` right after what it had) or until ``expires`` (``408``).
Pulled messages arrive with their stream subject, not the inbox, so one pull is
outstanding at a time per agent. A pull on a consumer (or stream) that does not exist
is answered ``503`` (no responders: the consumer itself serves ``MSG.NEXT``); a
consumer deleted while a request waits ends it with ``409 Consumer Deleted``
(``Pulled.unbound``: the agent binds again, ``agentbus.runtime.rebind``).


``subject_counts`` asks the stream (``$JS.API.STREAM.INFO`` with ``subjects_filter``)
how many messages each matching subject holds, in one request: the intake's rescan
uses it to pull only the bands that hold any (queued, running or waiting out a nak
delay: the stream keeps a message until it is acknowledged) instead of pulling every
band.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.bus.connection import Bus


async def nak_quietly(msg: Msg) -> None:
    """Nak ``msg`` so it is delivered again now.

    A failed nak is only logged: the ack wait lapses and the server redelivers anyway.
    """
    try:
        await msg.nak()
    except Exception as exc:
        logger.debug("nak failed", subject=msg.subject, error=repr(exc))


class _State(msgspec.Struct):
    subjects: dict[str, int] | None = None


class _StreamInfo(msgspec.Struct):
    state: _State | None = None
    error: dict[str, object] | None = None


_decode_info = msgspec.json.Decoder(_StreamInfo).decode


class Pulled(NamedTuple):
    """What one pull request brought: the messages, and whether the server ended it.

    ``ended`` is false when no answer came within the timeout (e.g. reconnecting).
    ``status`` is the status code that ended it (``"404"``, ``"408"``, ``"409"``,
    ``"503"``), empty when the batch was full or no answer came; ``description`` is
    the status text.
    """

    msgs: list[Msg]
    ended: bool
    status: str = ""
    description: str = ""

    @property
    def unbound(self) -> bool:
        """Whether the consumer is gone: no responder (``503``), or deleted (``409``)."""
        return self.status == "503" or (
            self.status == "409" and "deleted" in self.description.lower()
        )


class NoWaitPuller:
    """No-wait pull requests on the durable consumers of one stream, one at a time.

    Each request has its own reply subject ``<inbox>.<n>``, so the status that ends a
    request is never taken for the end of a later one. Pulled messages carry their
    stream subject, so a message that arrives after its request was given up (no
    answer within the timeout, e.g. under a reconnect) goes to ``late`` (the intake
    runs it if a slot is free) or, without one, is returned with a nak.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        *,
        timeout_s: float,
        late: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> None:
        self._nc = bus.nc
        self._stream = stream
        self._timeout_s = timeout_s
        self._late = late
        self._sub: Subscription | None = None
        self._inbox = ""
        self._reply = ""
        self._requests = 0
        self._want = 0
        self._got: list[Msg] = []
        self._ended: asyncio.Event = asyncio.Event()
        self._status = ("", "")

    async def start(self) -> None:
        """Subscribe to the reply inboxes; idempotent."""
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe (a message still in flight is redelivered after its lease)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # closed connection: nothing to undo
                logger.debug("puller unsubscribe failed", error=repr(exc))

    async def pull(self, consumer: str, batch: int, *, wait_s: float = 0.0) -> Pulled:
        """Up to ``batch`` messages that ``consumer`` has ready (maybe none).

        With ``wait_s`` > 0, an empty consumer may take up to ``wait_s`` seconds to
        deliver its first message; the request still ends as soon as it delivered
        what it had.

        Raises:
            nats.errors.Error: the request could not be sent.
        """
        await self.start()
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want, self._got = batch, []
        self._status = ("", "")
        self._ended.clear()
        body: dict[str, int | bool] = {"batch": batch, "no_wait": True}
        if wait_s > 0:
            body["expires"] = int(wait_s * 1e9)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        await self._nc.publish(subject, json.dumps(body).encode(), reply=self._reply)
        ended = True
        try:
            await asyncio.wait_for(self._ended.wait(), self._timeout_s + wait_s)
        except TimeoutError:  # no answer (reconnecting): take what came
            logger.debug("no-wait pull unanswered", consumer=consumer)
            ended = False
        got, self._got, self._want, self._reply = self._got, [], 0, ""
        return Pulled(got, ended, *self._status)

    async def subject_counts(self, subjects_filter: str) -> dict[str, int]:
        """Messages per subject of the stream matching ``subjects_filter`` (absent: none).

        Raises:
            nats.errors.Error: no answer (timeout, connection down).
            RuntimeError: the server answered with an error.
        """
        msg = await self._nc.request(
            f"$JS.API.STREAM.INFO.{self._stream}",
            json.dumps({"subjects_filter": subjects_filter}).encode(),
            timeout=self._timeout_s,
        )
        info = _decode_info(msg.data)
        if info.error is not None:
            raise RuntimeError(f"stream info for {subjects_filter!r}: {info.error}")
        return (info.state.subjects if info.state else None) or {}

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status:
            # 404/408/409 end the request they answer; 100 is a heartbeat
            if status != "100" and msg.subject == self._reply:
                self._status = (status, headers.get("Description", ""))
                self._ended.set()
            return
        if len(self._got) < self._want:
            self._got.append(msg)
            if len(self._got) == self._want:
                self._ended.set()
            return
        # the answer to a request given up on: run it if a slot is free, else give it back
        if self._late is not None:
            await self._late(msg)
            return
        logger.warning("late task delivery returned", subject=msg.subject)
        await nak_quietly(msg)
