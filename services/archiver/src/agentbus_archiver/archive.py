"""Copy the events stream into PostgreSQL, each event exactly once.

The archiver pulls ``<P>_EVENTS`` through its durable consumer
(``Names.ARCHIVER_CONSUMER``, filter ``<p>.events.>``, explicit acks, no delivery
limit): fetch up to ``batch_size`` events, insert them in one transaction keyed by
stream sequence (``ON CONFLICT (seq) DO NOTHING``), and ack them only after the
commit. So:

- a crash before the commit loses nothing: the events are delivered again after the
  ack wait;
- a crash after the commit but before the acks delivers them again, and the primary
  key skips them: no duplicate;
- a database outage holds the batch: no further fetch, the insert is retried with
  exponential backoff and jitter (tenacity) while the batch's lease is extended
  (``in_progress``), then the archiver goes on where it was.

A consumer that does not exist yet (first start, or deleted) is created at the
sequence after the highest one in the table, so it neither replays the whole stream
into a table that has it nor skips what the table lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import psycopg
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from agentbus.audit import EventRow, event_row
from agentbus.bus import Bus
from agentbus.errors import ContractError
from agentbus.names import Names
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_archiver.database import Database
from agentbus_archiver.metrics import ArchiverMetrics
from agentbus_archiver.settings import ArchiverSettings

T = TypeVar("T")
_BIND_ERRORS = (nats.errors.Error, TimeoutError, psycopg.Error)
SOURCE = "events"
"""``source`` label of the archiver's bad messages."""


class EventArchiver:
    """The fetch, insert, ack loop of one archiver process (``run``)."""

    def __init__(
        self,
        bus: Bus,
        settings: ArchiverSettings,
        db: Database,
        *,
        metrics: ArchiverMetrics,
        service_metrics: ServiceMetrics,
        stop: asyncio.Event,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.service_metrics = service_metrics
        self.stop = stop
        self.stream = bus.names.events_stream
        self.consumer = Names.ARCHIVER_CONSUMER

    async def run(self) -> None:
        """Archive until ``stop`` is set; a batch not yet committed then is given back."""
        sub = await self._bind()
        try:
            await self._archive(sub)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _archive(self, sub: JetStreamContext.PullSubscription | None) -> None:
        while sub is not None and not self.stop.is_set():
            try:
                msgs = await sub.fetch(
                    self.settings.batch_size, timeout=self.settings.fetch_timeout_s
                )
            except TimeoutError:  # nothing new (nats-py raises its own or the builtin one)
                continue
            except nats.errors.Error as exc:  # consumer deleted, connection trouble
                logger.warning("fetch failed; binding again", error=repr(exc))
                await self._sleep(self.settings.retry_initial_s)
                sub = await self._bind()
                continue
            rows = await self._rows(msgs)
            if not await self._commit(rows, msgs):
                for msg in msgs:  # stopping: let the next archiver have them now
                    with contextlib.suppress(Exception):
                        await msg.nak()
                return
            for msg in msgs:
                try:
                    await msg.ack()
                except Exception as exc:  # the event comes again; the key skips it
                    logger.warning("ack failed", seq=msg.metadata.sequence.stream, error=repr(exc))

    # -- consumer ------------------------------------------------------------------------
    async def _bind(self) -> JetStreamContext.PullSubscription | None:
        """Bind to the consumer, creating it if missing; None once stopped."""

        async def bind() -> JetStreamContext.PullSubscription:
            js = self.bus.js
            try:
                await js.consumer_info(self.stream, self.consumer)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(self.stream, await self._consumer_config())
            return await js.pull_subscribe_bind(self.consumer, stream=self.stream)

        try:
            return await self._retrying("bind", bind, _BIND_ERRORS)
        except _BIND_ERRORS:
            return None  # stopped while retrying

    async def _consumer_config(self) -> ConsumerConfig:
        last = await self.db.max_seq()
        logger.info("creating the archiver consumer", stream=self.stream, after_seq=last)
        return ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            filter_subject=self.bus.names.events_all(),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if last else DeliverPolicy.ALL,
            opt_start_seq=last + 1 if last else None,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.settings.max_ack_pending,
        )

    # -- rows and commits ----------------------------------------------------------------
    async def _rows(self, msgs: list[Msg]) -> list[EventRow]:
        rows: list[EventRow] = []
        prefix = self.bus.names.prefix
        for msg in msgs:
            meta = msg.metadata
            try:
                row, problem = event_row(
                    prefix,
                    seq=meta.sequence.stream,
                    time=meta.timestamp,
                    subject=msg.subject,
                    data=msg.data,
                )
            except ContractError as exc:  # outside the consumer's filter: cannot happen
                await self._bad(msg, str(exc))
                continue
            if problem is not None:
                await self._bad(msg, problem)  # archived all the same
            rows.append(row)
        return rows

    async def _bad(self, msg: Msg, reason: str) -> None:
        await report_bad_message(
            self.bus, self.service_metrics, source=SOURCE, subject=msg.subject, reason=reason
        )

    async def _commit(self, rows: list[EventRow], msgs: list[Msg]) -> bool:
        """Insert ``rows`` in one transaction, retrying until committed; False if stopped."""
        if not rows:
            return True

        async def insert() -> int:
            started = time.perf_counter()
            try:
                inserted = await self.db.insert(rows)
            except psycopg.Error:
                await self._keep_leases(msgs)
                raise
            self.metrics.commit_duration.observe(time.perf_counter() - started)
            return inserted

        try:
            inserted = await self._retrying("insert", insert, (psycopg.Error,))
        except psycopg.Error:
            return False
        self.metrics.archived.inc(inserted)
        self.metrics.duplicates.inc(len(rows) - inserted)
        self.metrics.batches.inc()
        self.metrics.last_seq.set(max(row.seq for row in rows))
        return True

    async def _keep_leases(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.in_progress()

    # -- retries -------------------------------------------------------------------------
    async def _retrying(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        errors: tuple[type[BaseException], ...],
    ) -> T:
        """``call()`` until it returns, retrying ``errors`` with backoff until ``stop``.

        Raises:
            BaseException: the last error of ``errors`` once ``stop`` is set.
        """

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, psycopg.Error):
                self.metrics.database_errors.labels(operation).inc()
                self.metrics.database_up.set(0)
            logger.warning(
                "archiver operation failed; retrying",
                operation=operation,
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 3),
                error=repr(exc),
            )

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(errors),
            wait=wait_exponential_jitter(
                multiplier=self.settings.retry_initial_s, max=self.settings.retry_max_s
            ),
            stop=lambda _: self.stop.is_set(),
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        ):
            with attempt:
                try:
                    result = await call()
                except psycopg.Error:
                    await self.db.reset()
                    raise
                self.metrics.database_up.set(1)
                return result
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    async def _sleep(self, delay_s: float) -> None:
        """Sleep ``delay_s`` seconds, or less once ``stop`` is set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay_s)
