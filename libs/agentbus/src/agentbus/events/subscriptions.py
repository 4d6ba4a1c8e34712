"""Consuming agent events: the consumers of an agent's subscriptions and their loops.

``Subscriptions.start()`` creates (or binds) each route's consumers
(``agentbus.events.routes.consumer_plan``) and runs one pull loop per consumer. A
delivered event is decoded as the handler's payload type and handed to the handler;
then:

- the handler returned: ack;
- it raised a retryable error (``agentbus.retry.is_retryable``) before its
  ``max_deliveries``-th delivery: nak with the backoff delay of that delivery
  (``agentbus.retry.backoff_s``); a keyed event's partition waits for it;
- it raised otherwise, the payload does not decode, or the delivery count is past
  ``max_deliveries`` (the handler never finished: the agent died on it each time):
  term, and report it like a poison task (log, ``agentbus_bad_messages_total{source=
  "topics"}``, an ``ErrorEvent`` on ``<p>.events.error.agent.<agent_id>``);
- the agent is stopping and the handler did not finish within the grace: nak, so
  another replica takes it now.

Outcomes are counted in ``agentbus_agent_event_deliveries_total{subscription,
outcome}``. A consumer found gone when a pull fails (deleted, or the topics stream
made anew) is made again (``agentbus_agent_event_rebinds_total{subscription}``).

A handler that runs longer than a third of the ack wait (``AgentSettings.lease_s``)
has its event's ack wait renewed (``in_progress``) every third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agentbus.bus import Bus
from agentbus.bus.consumers import check_consumer
from agentbus.events.routes import EventContext, EventRoute, PlannedConsumer, consumer_plan
from agentbus.events.topics import KEY_HEADER, MSG_ID_HEADER, SOURCE_HEADER, Events
from agentbus.retry import backoff_s, is_retryable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

_RETRY_PAUSE_S = 1.0


class Subscriptions:
    """The event subscriptions of one agent process."""

    def __init__(
        self,
        bus: Bus,
        routes: Sequence[EventRoute],
        *,
        agent_id: str,
        deployment: str,
        ack_wait_s: float,
        fetch_timeout_s: float,
        on_bad: Callable[[str, str], Awaitable[None]],
        registry: Callable[[], CollectorRegistry] | None = None,
    ) -> None:
        self.bus = bus
        self.routes = list(routes)
        self.agent_id = agent_id
        self.deployment = deployment
        self.ack_wait_s = ack_wait_s
        self.fetch_timeout_s = fetch_timeout_s
        self.on_bad = on_bad
        self.metrics = EventMetrics(registry)
        self.events = Events(bus, source=agent_id)
        self._loops: list[asyncio.Task[None]] = []
        self._psubs: list[JetStreamContext.PullSubscription] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.handled = 0
        """Events acked by this agent."""

    def owner(self, route: EventRoute) -> str:
        """Whose consumers ``route`` reads: the deployment's (shared) or the agent's (each)."""
        return self.deployment if route.mode == "shared" else self.agent_id

    async def start(self) -> None:
        """Create or bind every consumer and start pulling.

        Raises:
            nats.js.errors.Error: a consumer could not be made (the topics stream is
                missing: nobody ran ``Bus.ensure``); nothing is left running.
        """
        try:
            await self._start()
        except BaseException:
            await self.close(0)
            raise

    async def _start(self) -> None:
        js = self.bus.js
        stream = self.bus.names.topics_stream
        for route in self.routes:
            plan = consumer_plan(
                self.bus.names, route, owner=self.owner(route), ack_wait_s=self.ack_wait_s
            )
            await asyncio.gather(*(_ensure_consumer(self.bus, stream, c) for c in plan))
            for c in plan:
                psub = await js.pull_subscribe_bind(c.name, stream=stream)
                self._psubs.append(psub)
                self._loops.append(asyncio.create_task(self._pull(route, c, psub)))
            logger.info("subscribed", pattern=route.pattern, mode=route.mode, name=route.name)

    async def close(self, grace_s: float) -> None:
        """Stop pulling, let running handlers finish for ``grace_s`` s, nak the rest."""
        self._stopping = True
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for psub in self._psubs:  # one left open would stall the connection's drain
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        if self._handling:
            _, late = await asyncio.wait(self._handling, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _pull(
        self, route: EventRoute, consumer: PlannedConsumer, psub: JetStreamContext.PullSubscription
    ) -> None:
        keyed = consumer.part != "_"
        capacity = 1 if keyed else route.max_in_flight
        mine: set[asyncio.Task[None]] = set()
        while not self._stopping:
            if len(mine) >= capacity:
                await asyncio.wait(mine, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await psub.fetch(batch=capacity - len(mine), timeout=self.fetch_timeout_s)
            except TimeoutError:  # nothing to deliver (nats' TimeoutError is one too)
                continue
            except Exception as exc:  # consumer or stream gone, connection trouble
                logger.warning("event pull failed", consumer=consumer.name, error=repr(exc))
                await self._rebind(route, consumer)
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            for msg in msgs:
                t = asyncio.create_task(self._handle(route, msg))
                mine.add(t)
                self._handling.add(t)
                t.add_done_callback(mine.discard)
                t.add_done_callback(self._handling.discard)
                if keyed:  # one at a time: the next of the partition waits for this ack
                    await asyncio.wait({t})

    async def _rebind(self, route: EventRoute, consumer: PlannedConsumer) -> None:
        """Make ``consumer`` again if it is gone (deleted, or the stream made anew).

        It is made as first planned (its ``start``): a ``new`` subscription misses
        what was published while it was gone.
        """
        js, stream = self.bus.js, self.bus.names.topics_stream
        try:
            await js.consumer_info(stream, consumer.name)
            return
        except nats.js.errors.NotFoundError:
            pass
        except Exception:  # no answer: try again on the next failed pull
            return
        try:
            await _ensure_consumer(self.bus, stream, consumer)
        except Exception as exc:  # the stream itself is missing: next time
            logger.warning("event consumer not made", consumer=consumer.name, error=repr(exc))
            return
        self.metrics.rebinds.labels(route.name).inc()
        logger.info("event consumer made again", consumer=consumer.name)

    async def _handle(self, route: EventRoute, msg: Msg) -> None:
        meta = msg.metadata
        delivery = meta.num_delivered or 1
        headers = msg.headers or {}
        topic = topic_of(msg.subject)
        with logger.contextualize(subject=msg.subject, seq=meta.sequence.stream, delivery=delivery):
            if delivery > route.max_deliveries:
                reason = (
                    f"event on {topic!r} delivered {delivery} times: the handler never "
                    "finished (the agent died on it)"
                )
                await self._poison(route, msg, reason)
                return
            try:
                payload = msgspec.json.decode(msg.data, type=route.payload_type)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._poison(route, msg, f"event payload does not decode: {exc}")
                return
            ctx = EventContext(
                topic=topic,
                key=headers.get(KEY_HEADER),
                event_id=headers.get(MSG_ID_HEADER, ""),
                seq=meta.sequence.stream,
                published_at=_utc(meta.timestamp),
                source=headers.get(SOURCE_HEADER, ""),
                delivery=delivery,
                agent_id=self.agent_id,
                events=self.events,
                bus=self.bus,
            )
            try:
                await self._run(msg, route.fn(ctx, payload))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await msg.nak()  # stopping: another replica takes it now
                self.metrics.deliveries.labels(route.name, "returned").inc()
                raise
            except Exception as exc:
                await self._failed(route, msg, delivery, exc)
                return
            try:
                await msg.ack()
                self.handled += 1
                self.metrics.deliveries.labels(route.name, "acked").inc()
            except Exception as exc:  # the ack wait lapses: redelivered
                logger.warning("event ack failed", error=repr(exc))

    async def _run(self, msg: Msg, work: Awaitable[None]) -> None:
        """Await ``work``, renewing ``msg``'s ack wait every third of it meanwhile."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.ack_wait_s / 3)
                if done:
                    return task.result()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _failed(self, route: EventRoute, msg: Msg, delivery: int, exc: Exception) -> None:
        kind = f"{type(exc).__name__}: {exc}"
        if is_retryable(exc) and delivery < route.max_deliveries:
            delay_s = backoff_s(None, delivery)
            logger.info("event handler failed, retrying", error=kind, retry_in_s=delay_s)
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay_s)
            self.metrics.deliveries.labels(route.name, "retried").inc()
            return
        why = "not retryable" if not is_retryable(exc) else f"delivery {delivery} was the last"
        await self._poison(route, msg, f"event handler failed ({why}): {kind}")

    async def _poison(self, route: EventRoute, msg: Msg, reason: str) -> None:
        with contextlib.suppress(Exception):
            await msg.term()
        self.metrics.deliveries.labels(route.name, "terminated").inc()
        await self.on_bad(msg.subject, f"subscription {route.name!r}: {reason}")


class EventMetrics:
    """Counters of event deliveries on an agent's registry (``Agent.registry``).

    ``prometheus_client`` is imported on first use, as in ``AgentMetrics``: not on an
    agent's start-up path.
    """

    def __init__(self, registry: Callable[[], CollectorRegistry] | None) -> None:
        self._registry = registry
        """Gives the registry to put the counters on; None: a registry of their own."""

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """The registry the counters are on (a new one if none was given)."""
        from prometheus_client import CollectorRegistry

        return self._registry() if self._registry else CollectorRegistry()

    @functools.cached_property
    def deliveries(self) -> Counter:
        """``agentbus_agent_event_deliveries_total{subscription, outcome}``."""
        from prometheus_client import Counter

        return Counter(
            "agentbus_agent_event_deliveries_total",
            "Event deliveries handled, by subscription and outcome (acked, retried, "
            "terminated, or returned on stop).",
            ["subscription", "outcome"],
            registry=self.registry,
        )

    @functools.cached_property
    def rebinds(self) -> Counter:
        """``agentbus_agent_event_rebinds_total{subscription}``."""
        from prometheus_client import Counter

        return Counter(
            "agentbus_agent_event_rebinds_total",
            "Event consumers found gone (deleted, or the topics stream made anew) and "
            "made again without a restart.",
            ["subscription"],
            registry=self.registry,
        )


def topic_of(subject: str) -> str:
    """The topic of an event subject ``<p>.topics.<topic>.<part>``."""
    return subject.split(".", 2)[2].rsplit(".", 1)[0]


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)


async def _ensure_consumer(bus: Bus, stream: str, consumer: PlannedConsumer) -> None:
    """Create the consumer, or update one that exists while keeping its start position.

    The server refuses to change a consumer's start (``deliver policy can not be
    updated``, 10012; 10148 for another config under the name): a replica started later
    with another ``start`` binds the consumers as they are. A provisioned agent only
    checks that the consumer exists (``agentbus.bus.consumers``).
    """
    if bus.provisioned:
        await check_consumer(bus, stream, consumer.name)
        return
    js = bus.js
    config = consumer.config
    try:
        await js.add_consumer(stream, config)
        return
    except nats.js.errors.APIError as exc:
        try:
            current = (await js.consumer_info(stream, consumer.name)).config
        except nats.js.errors.NotFoundError:
            raise exc from None
    config.deliver_policy = current.deliver_policy
    config.opt_start_seq = current.opt_start_seq
    config.opt_start_time = current.opt_start_time
    await js.add_consumer(stream, config)
