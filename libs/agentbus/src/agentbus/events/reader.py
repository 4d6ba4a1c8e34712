"""Read a stream in order from a start, with no gap and no duplicate: ``OrderedReader``.

An ephemeral pull consumer (no acks, in memory, one replica, deleted by the server
after ``inactive_threshold_s`` without a pull) reads the stream's messages matching
``filters`` (several filter subjects; the server filters). The reader checks every
message's consumer sequence: a message missing (a pull answer lost to a timeout, a
consumer the server dropped, a reconnect) makes it re-create the consumer from the
stream sequence after the last message it returned, so the caller never sees a gap
or a message twice. That is the "ordered consumer" of the NATS clients, pull-based:
nothing arrives that the caller did not ask for, so a slow caller holds at most one
``batch`` in memory.

Used by ``agentbus events tail`` (``agentbus.events.tail``) and the gateway's
Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime

import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from agentbus.bus import Bus
from agentbus.errors import ContractError, UnavailableError

Start = int | datetime | None
"""Where a read starts: None new messages only, an int the first stream sequence to
read (1: the whole stream), a datetime the first message stored at or after it."""
INACTIVE_THRESHOLD_S = 30.0
"""The server deletes a reader's consumer after this long without a pull."""
_RECREATE_PAUSE_S = 0.2


class OrderedReader:
    """Messages of ``stream`` matching ``filters`` from ``start`` on, in stream order.

    Use as ``async with OrderedReader(...) as reader: msgs = await reader.fetch(1.0)``.

    Attributes:
        next_seq: the stream sequence the next message will be at least (after
            ``open``): what to resume from.
        pending: messages matching ``filters`` stored after the last one returned, as
            the server last said (0 before the first).
        skipped: ``(first, last)`` stream sequences asked for (``start`` or a resume
            point) that the stream no longer held when the consumer was made
            (retention removed them); None if nothing was skipped. Reset by ``fetch``
            callers as they report it.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        filters: Sequence[str],
        *,
        start: Start = None,
        batch: int = 64,
        inactive_threshold_s: float = INACTIVE_THRESHOLD_S,
    ) -> None:
        if not filters:
            raise ContractError("an ordered reader needs at least one filter subject")
        if batch < 1:
            raise ContractError(f"batch must be at least 1, got {batch}")
        self.bus = bus
        self.stream = stream
        self.filters = list(filters)
        self.batch = batch
        self.inactive_threshold_s = inactive_threshold_s
        self._start = start
        self.next_seq = 0
        self.pending = 0
        self.skipped: tuple[int, int] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._next_consumer_seq = 1
        self._consumer = ""

    async def __aenter__(self) -> OrderedReader:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            name=f"reader{uuid.uuid4().hex}",
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=self.inactive_threshold_s,
        )
        if len(self.filters) == 1:
            config.filter_subject = self.filters[0]
        else:
            config.filter_subjects = self.filters
        start = self._start if self.next_seq == 0 else self.next_seq
        if start is None:
            config.deliver_policy = DeliverPolicy.NEW
        elif isinstance(start, datetime):
            config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, start
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(start, 1)
        return config

    async def open(self) -> None:
        """Make the consumer (again, from ``next_seq`` once started).

        Raises:
            UnavailableError: no such stream, or the server did not answer.
            ContractError: the server refused the filters (e.g. overlapping).
        """
        await self._drop()
        config = self._config()
        self._consumer = str(config.name)
        wanted = config.opt_start_seq
        try:
            info = await self.bus.js.add_consumer(self.stream, config)
            self._sub = await self.bus.js.pull_subscribe_bind(config.name, stream=self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise UnavailableError(f"stream {self.stream} does not exist") from exc
        except nats.js.errors.BadRequestError as exc:
            raise ContractError(f"stream {self.stream} refused the filters: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read stream {self.stream}: {exc!r}") from exc
        first = (
            info.delivered.stream_seq if info.delivered else 0
        ) + 1  # the server's start, clamped to the stream
        if wanted is not None and first > wanted:
            self.skipped = (wanted, first - 1)
        self.next_seq = first
        self.pending = info.num_pending or 0
        self._next_consumer_seq = 1

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await sub.unsubscribe()
            await self.bus.js.delete_consumer(self.stream, self._consumer)
        except (nats.errors.Error, TimeoutError, nats.js.errors.Error):
            pass  # gone already, or the server drops it after its inactive threshold

    async def close(self) -> None:
        """Delete the consumer (best effort: the server drops it when idle anyway)."""
        await self._drop()

    async def fetch(self, timeout_s: float) -> list[Msg]:
        """The next messages (at most ``batch``), waiting up to ``timeout_s`` for one.

        Returns an empty list when none arrived in time. After a gap in the consumer's
        sequence the consumer is re-created from ``next_seq`` and the rest of that
        batch is dropped (it is read again).

        Raises:
            UnavailableError: the consumer cannot be (re-)created.
        """
        if self._sub is None:
            await self.open()
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(self.batch, timeout=timeout_s)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.info(
                "ordered reader re-creates its consumer", stream=self.stream, error=repr(exc)
            )
            await asyncio.sleep(_RECREATE_PAUSE_S)
            await self.open()
            return []
        out: list[Msg] = []
        for msg in msgs:
            meta = msg.metadata
            if (
                meta.sequence.consumer < self._next_consumer_seq
                or meta.sequence.stream < self.next_seq
            ):
                continue  # a late answer to an earlier pull: already returned
            if meta.sequence.consumer > self._next_consumer_seq:
                logger.info(
                    "ordered reader saw a gap",
                    stream=self.stream,
                    expected=self._next_consumer_seq,
                    got=meta.sequence.consumer,
                )
                await self.open()
                break
            self._next_consumer_seq += 1
            self.next_seq = meta.sequence.stream + 1
            self.pending = meta.num_pending
            out.append(msg)
        return out
