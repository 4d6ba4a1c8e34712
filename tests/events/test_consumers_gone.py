"""A subscription whose consumers are deleted under the running agent (by an operator,
or with the whole topics stream) makes them again and goes on handling events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from loguru import logger

from agentbus.bus import Bus
from agentbus.events import EventContext, publish_event
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings, BusSettings
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


def listener(seen: list[Any]) -> Agent:
    a = Agent(
        "gone",
        settings=AgentSettings(agent_id="gone-0", deployment="gone", events_pull_s=0.5),
    )

    @a.on_event("news.>")
    async def on_news(ctx: EventContext, payload: Any) -> None:
        seen.append(payload)

    return a


@pytest.mark.timeout(60)
async def test_deleted_consumers_and_stream_are_made_again(bus: Bus) -> None:
    seen: list[Any] = []
    agent = listener(seen)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(bus, stop))
    stream = bus.names.topics_stream
    try:
        await eventually(lambda: _true(_bound(agent)), what="subscribed")
        await publish_event(bus, "news.a", 1)
        await eventually(lambda: _true(seen == [1]), what="first event")
        await bus.js.delete_consumer(stream, "topic-gone-on_news")
        await bus.js.delete_consumer(stream, "topic-gone-on_news-k2")

        async def published_and_seen(value: int, key: str | None = None) -> bool:
            if value not in seen:
                await publish_event(bus, "news.b", value, key=key)
                await asyncio.sleep(0.2)
            return value in seen

        await eventually(lambda: published_and_seen(2), timeout_s=20, what="keyless again")
        key = next(
            k
            for k in (f"k{i}" for i in range(100))
            if bus.names.topic_subject("x", k).endswith(".k2")
        )
        await eventually(lambda: published_and_seen(3, key), timeout_s=20, what="keyed again")
        await bus.js.delete_stream(stream)
        await bus.ensure()
        await eventually(lambda: published_and_seen(4), timeout_s=20, what="after a new stream")
    finally:
        stop.set()
        await asyncio.wait_for(run, 20)
    rebinds = agent.registry.get_sample_value(
        "agentbus_agent_event_rebinds_total", {"subscription": "on_news"}
    )
    acked = agent.registry.get_sample_value(
        "agentbus_agent_event_deliveries_total", {"subscription": "on_news", "outcome": "acked"}
    )
    assert rebinds is not None and rebinds >= 3  # two deleted, nine after the new stream
    assert acked is not None and acked >= 4


async def _true(value: bool) -> bool:
    return value


def _bound(agent: Agent) -> bool:
    """Every consumer of the agent's one subscription is made and pulled from."""
    return agent.subscriptions is not None and len(agent.subscriptions._loops) == 9


@pytest.mark.timeout(60)
async def test_an_event_still_running_at_stop_is_returned_within_the_grace(bus: Bus) -> None:
    started = asyncio.Event()
    deliveries: list[int] = []

    def replica(agent_id: str, hang: bool) -> Agent:
        settings = AgentSettings(
            agent_id=agent_id, deployment="slow", stop_grace_s=0.5, events_pull_s=0.5
        )
        a = Agent("slow", settings=settings)

        @a.on_event("slow.work")
        async def on_work(ctx: EventContext, payload: Any) -> None:
            deliveries.append(ctx.delivery)
            started.set()
            if hang:
                await asyncio.sleep(3600)

        return a

    first, stop_first = replica("slow-0", hang=True), asyncio.Event()
    run = asyncio.create_task(first.run(bus, stop_first))
    await eventually(lambda: _true(_bound(first)), what="subscribed")
    await publish_event(bus, "slow.work", {"n": 1})
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop_first.set()
    await asyncio.wait_for(run, 10)
    assert loop.time() - t0 < 5  # the grace (0.5 s), not the handler
    returned = first.registry.get_sample_value(
        "agentbus_agent_event_deliveries_total", {"subscription": "on_work", "outcome": "returned"}
    )
    assert returned == 1
    second, stop_second = replica("slow-1", hang=False), asyncio.Event()
    run = asyncio.create_task(second.run(bus, stop_second))
    try:
        await eventually(lambda: _true(deliveries == [1, 2]), timeout_s=15, what="redelivered")
    finally:
        stop_second.set()
        await asyncio.wait_for(run, 10)


@pytest.mark.timeout(60)
async def test_an_idle_subscription_is_quiet_and_stops_at_once(
    bus_settings: BusSettings, caplog: pytest.LogCaptureFixture
) -> None:
    b = await Bus.connect(bus_settings)
    await b.ensure()
    agent = listener([])
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(b, stop))
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        await eventually(lambda: _true(_bound(agent)), what="subscribed")
        await asyncio.sleep(1.5)  # three fetch timeouts (0.5 s) with nothing to deliver
    finally:
        logger.remove(sink)
        stop.set()
        await asyncio.wait_for(run, 10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.close()  # no pull subscription left open to stall the drain
    assert loop.time() - t0 < 2.5
    assert "event pull failed" not in warnings


@pytest.mark.timeout(60)
async def test_an_event_reaches_an_idle_subscription_before_its_pull_expires(bus: Bus) -> None:
    seen: list[Any] = []
    a = Agent("idle", settings=AgentSettings(agent_id="idle-0", events_pull_s=20))

    @a.on_event("idle.>")
    async def on_idle(ctx: EventContext, payload: Any) -> None:
        seen.append(payload)

    stop = asyncio.Event()
    run = asyncio.create_task(a.run(bus, stop))
    loop = asyncio.get_running_loop()
    try:
        await eventually(lambda: _true(_bound(a)), what="subscribed")
        await asyncio.sleep(1.0)  # every pull is now a waiting one
        waits_s = []
        for n, key in enumerate((None, "k", None)):  # keyless (batch pull), keyed, keyless
            t0 = loop.time()
            await publish_event(bus, "idle.x", n, key=key)

            async def handled(n: int = n) -> bool:
                return n in seen

            await eventually(handled, timeout_s=30, every_s=0.01)
            waits_s.append(loop.time() - t0)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    assert max(waits_s) < 10, waits_s  # not held until the 20 s pull expires
