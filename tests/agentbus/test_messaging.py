"""Agents talking to agents in one process: broadcast, ask, direct-message retries.

Stopped agents and expiring messages need agent processes: ``test_inbox_process.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import (
    AgentBusError,
    ContractError,
    NotFoundError,
    RequestTimeoutError,
    UnavailableError,
)
from agentbus.kv.replay import replay
from agentbus.messages import AgentInfo, encode
from agentbus.messaging import MessageContext
from agentbus.runtime import Agent, TaskContext
from tests._harness.polling import eventually
from tests._harness.work_stream import ErrorEvents, make_agent, running

pytestmark = pytest.mark.nats


class Ping(msgspec.Struct, frozen=True):
    n: int


def listening_agent(agent_id: str, capability: str, got: list[tuple[str, Any]]) -> Agent:
    """An agent of ``capability`` that records (kind, payload) of every message."""
    agent = make_agent(agent_id=agent_id, message_max_deliveries=2)

    @agent.handler(capability)
    async def work(ctx: TaskContext, value: Any) -> Any:
        return value

    @agent.on_message
    async def heard(ctx: MessageContext, payload: Ping) -> None:
        got.append((ctx.kind, payload))

    return agent


async def _registered(bus: Bus, *agent_ids: str) -> bool:
    agents = await replay(await bus.kv(bus.names.agents_bucket), AgentInfo)
    return all(a in agents for a in agent_ids)


@pytest.mark.timeout(60)
async def test_broadcast_reaches_every_live_agent_of_the_capability_and_no_other(
    bus: Bus,
) -> None:
    a1: list[tuple[str, Any]] = []
    a2: list[tuple[str, Any]] = []
    b1: list[tuple[str, Any]] = []
    client = Client(bus)
    async with (
        running(listening_agent("a-1", "alpha", a1), bus),
        running(listening_agent("a-2", "alpha", a2), bus),
        running(listening_agent("b-1", "beta", b1), bus),
    ):
        await eventually(lambda: _registered(bus, "a-1", "a-2", "b-1"), what="agents up")
        assert await client.broadcast("alpha", Ping(1)) == 2
        await eventually(lambda: _true(a1 and a2), what="both alpha agents heard it")
        # the beta agent hears its own broadcast, and only that one: it heard none before
        assert await client.broadcast("beta", Ping(2)) == 1
        await eventually(lambda: _true(b1), what="the beta agent heard its broadcast")
        await asyncio.sleep(0.2)  # let any stray delivery land before counting
    assert a1 == a2 == [("broadcast", Ping(1))]
    assert b1 == [("broadcast", Ping(2))]


async def _true(value: object) -> bool:
    return bool(value)


def asking_agent() -> Agent:
    agent = make_agent(agent_id="oracle-1")

    @agent.on_ask("add")
    async def add(ctx: MessageContext, pair: list[int]) -> dict[str, Any]:
        return {"sum": sum(pair), "by": ctx.agent_id, "from": ctx.source}

    @agent.on_ask("relay")
    async def relay(ctx: MessageContext, pair: list[int]) -> Any:
        return await ctx.ask("add", pair, timeout_s=5)  # asks as this agent

    @agent.on_ask("slow")
    async def slow(ctx: MessageContext, payload: Any) -> None:
        await asyncio.sleep(5)

    @agent.on_ask("broken")
    async def broken(ctx: MessageContext, payload: Any) -> None:
        raise ValueError("no good")

    @agent.on_ask("lookup")
    async def lookup(ctx: MessageContext, payload: Any) -> None:
        raise NotFoundError(f"no entry {payload}")

    return agent


async def _answers(client: Client) -> bool:
    try:
        await client.ask("add", [0])
    except UnavailableError:
        return False
    return True


@pytest.mark.timeout(60)
async def test_ask_round_trip_and_typed_errors(bus: Bus) -> None:
    client = Client(bus)
    async with running(asking_agent(), bus):
        await eventually(lambda: _answers(client), what="ask endpoints up")
        reply = await client.ask("add", [2, 3], timeout_s=5)
        assert reply == {"sum": 5, "by": "oracle-1", "from": "test"}
        assert await client.ask("relay", [1, 1]) == {"sum": 2, "by": "oracle-1", "from": "oracle-1"}
        with pytest.raises(UnavailableError, match="no agent of capability 'nobody'"):
            await client.ask("nobody", {}, timeout_s=2)
        with pytest.raises(RequestTimeoutError):
            await client.ask("slow", {}, timeout_s=0.3)
        with pytest.raises(AgentBusError, match="ValueError: no good") as failed:
            await client.ask("broken", {})
        assert type(failed.value) is AgentBusError  # code 500
        with pytest.raises(NotFoundError, match="no entry 7"):
            await client.ask("lookup", 7)
        with pytest.raises(ContractError, match="does not decode"):
            await client.ask("add", "not a list")


@pytest.mark.timeout(60)
async def test_direct_message_handler_error_is_retried_then_failed(bus: Bus) -> None:
    errors = await ErrorEvents().start(bus)
    client = Client(bus)
    calls: list[tuple[int, int]] = []
    agent = make_agent(agent_id="flaky-1", message_max_deliveries=2)

    @agent.on_message
    async def heard(ctx: MessageContext, payload: Ping) -> None:
        calls.append((payload.n, ctx.delivery))
        if payload.n == 2 or ctx.delivery == 1:
            raise RuntimeError(f"cannot take {payload.n} now")

    async with running(agent, bus):
        once = await client.send("flaky-1", Ping(1), wait_s=20)
        never = await client.send("flaky-1", Ping(2), wait_s=20)
        bad = await client.send("flaky-1", {"n": "one"}, wait_s=20)
        await eventually(lambda: _true(len(errors.about("flaky-1")) == 2), what="2 error events")
    assert once.delivered and (once.outcome, once.error) == ("delivered", None)
    assert never.outcome == "failed" and never.error is not None
    assert never.error.error_type == "RuntimeError"
    assert bad.outcome == "rejected"
    assert calls == [(1, 1), (1, 2), (2, 1), (2, 2)]
    reasons = " | ".join(e.reason for e in errors.about("flaky-1"))
    assert "failed on all 2 deliveries" in reasons and "does not decode" in reasons
    info = await bus.js.stream_info(bus.names.inbox_stream, subjects_filter=">")
    assert bus.names.inbox_subject("flaky-1") not in (info.state.subjects or {})


@pytest.mark.timeout(30)
async def test_send_refuses_bad_arguments(bus: Bus) -> None:
    client = Client(bus)
    with pytest.raises(ContractError):
        await client.send("Not An Id", {})
    with pytest.raises(ContractError, match="ttl_s"):
        await client.send("someone", {}, ttl_s=0)
    with pytest.raises(ContractError, match="does not encode"):
        await client.send("someone", object())
    receipt = await client.send("someone", {"x": 1}, message_id="m-1")
    again = await client.send("someone", {"x": 1}, message_id="m-1")
    assert (again.seq, again.duplicate, receipt.outcome) == (receipt.seq, True, "pending")
    stored = await bus.js.get_msg(bus.names.inbox_stream, receipt.seq)
    assert stored.data == encode({"x": 1})


def relaying_agent(agent_id: str, to: str) -> Agent:
    """An agent that passes every message it gets on to agent ``to``, as itself."""
    agent = make_agent(agent_id=agent_id)

    @agent.handler("relay")
    async def work(ctx: TaskContext, value: Any) -> Any:
        return value

    @agent.on_message
    async def heard(ctx: MessageContext, payload: Ping) -> None:
        await ctx.send(to, payload)

    return agent


@pytest.mark.timeout(60)
async def test_messages_carry_their_sender_and_a_forged_source_is_rejected(bus: Bus) -> None:
    got: list[tuple[str, Any]] = []
    client = Client(bus)
    seen: list[str] = []

    async def on_inbox(msg: Any) -> None:
        seen.append(msg.subject)

    await bus.nc.subscribe(bus.names.inbox_filter("b-1"), cb=on_inbox)
    errors = await ErrorEvents().start(bus)
    async with (
        running(listening_agent("b-1", "beta", got), bus),
        running(relaying_agent("r-1", "b-1"), bus),
    ):
        await eventually(lambda: _registered(bus, "b-1", "r-1"), what="agents up")
        await client.send("r-1", Ping(1))  # a client's: <p>.inbox.r-1._client
        await eventually(lambda: _true(got), what="the relayed message arrived")
        assert seen == [bus.names.inbox_subject("b-1", "r-1")]  # the relay's own id
        # someone on mallory's subject claiming to be r-1: rejected, handler not run
        forged = bus.names.inbox_subject("b-1", "mallory")
        headers = {"Agentbus-Source": "r-1", "Nats-Msg-Id": "forged-1"}
        await bus.js.publish(forged, encode(Ping(2)), headers=headers)
        await bus.nc.publish(
            bus.names.broadcast_subject("beta", "mallory"),
            encode(Ping(3)),
            headers={"Agentbus-Source": "r-1"},
        )
        await eventually(lambda: _true(len(errors.about("mallory")) == 2), what="2 refusals")
        receipt = bus.names.inbox_receipt_subject("b-1", "forged-1")
        stored = await bus.js.get_last_msg(bus.names.inbox_stream, receipt)
        assert b'"rejected"' in (stored.data or b"")
    assert got == [("direct", Ping(1))]
