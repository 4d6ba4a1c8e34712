"""Subtasks and hand-offs from handlers: parent links, children, waiting, retries.

Real scheduler (in-process), real agent runtime on its own connection, real
nats-server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import ConflictError, NotFoundError, RetryableTaskError
from agentbus.messages import Backoff, encode
from agentbus.runtime import Agent, TaskContext
from agentbus.runtime.context import Handoff, derived_id
from agentbus.settings import BusSettings
from agentbus_scheduler.tasks.admission import new_record
from tests._harness.agents import agent_running, quick_settings, sleeper, worker
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


def fan_out_agent(agent_id: str) -> Agent:
    agent = sleeper(agent_id, name="fan")

    @agent.handler("all")
    async def gather_all(ctx: TaskContext, delays: list[float]) -> list[Any]:
        children = [await ctx.submit("sleep", d) for d in delays]
        records = await ctx.wait_all(children, timeout_s=30)
        return [[r.task_id, msgspec.json.decode(r.output)] for r in records]

    @agent.handler("first")
    async def first(ctx: TaskContext, delays: list[float]) -> Any:
        children = [await ctx.submit("sleep", d) for d in delays]
        winner = await ctx.wait_first(children, timeout_s=30)
        for child in children:
            if child.task_id != winner.task_id:
                await ctx.cancel(child)
        return msgspec.json.decode(winner.output)

    @agent.handler("completed")
    async def completed(ctx: TaskContext, delays: list[float]) -> list[Any]:
        children = [await ctx.submit("sleep", d) for d in delays]
        return [msgspec.json.decode(r.output) async for r in ctx.as_completed(children)]

    return agent


async def test_children_are_linked_and_awaited_in_order(
    bus: Bus, bus_settings: BusSettings
) -> None:
    async with running_scheduler(bus), agent_running(fan_out_agent("sub-1"), bus_settings):
        client = Client(bus)
        parent = await client.submit("all", [0.3, 0.0, 0.1], tenant="acme", priority=2)
        done = await client.wait(parent.task_id, timeout_s=30)
        children = [await client.get(c) for c in done.children]
    assert done.status == "succeeded"
    # the parent lists its children in submission order; wait_all kept that order
    expected = [derived_id(parent.task_id, f"sub/{n}") for n in range(3)]
    assert done.children == expected
    delays = [0.3, 0.0, 0.1]
    assert msgspec.json.decode(done.output) == [
        [t, d] for t, d in zip(expected, delays, strict=True)
    ]
    # each child points at its parent and inherits its tenant and priority
    assert [(c.parent_id, c.tenant, c.priority) for c in children] == [
        (parent.task_id, "acme", 2)
    ] * 3


async def test_wait_first_and_as_completed(bus: Bus, bus_settings: BusSettings) -> None:
    async with running_scheduler(bus), agent_running(fan_out_agent("sub-2"), bus_settings):
        client = Client(bus)
        first = await client.submit("first", [5.0, 0.0, 3.0])
        completed = await client.submit("completed", [0.6, 0.0, 0.3])
        first_done = await client.wait(first.task_id, timeout_s=30)
        completed_done = await client.wait(completed.task_id, timeout_s=30)
        losers = [await client.get(c) for c in first_done.children]
    assert msgspec.json.decode(first_done.output) == 0.0
    assert sorted(r.status for r in losers) == ["cancelled", "cancelled", "succeeded"]
    assert msgspec.json.decode(completed_done.output) == [0.0, 0.3, 0.6]


async def test_a_retried_handler_reattaches_to_its_children(
    bus: Bus, bus_settings: BusSettings
) -> None:
    agent = Agent("retry", max_concurrency=4, settings=quick_settings("sub-3"))
    child_runs: list[str] = []

    @agent.handler("child")
    async def child(ctx: TaskContext, value: int) -> int:
        child_runs.append(ctx.task_id)
        return value * 10

    @agent.handler("parent")
    async def parent(ctx: TaskContext, value: int) -> int:
        kid = await ctx.submit("child", value)
        if ctx.attempt == 1:
            raise RetryableTaskError("first attempt fails after submitting its child")
        (record,) = await ctx.wait_all([kid], timeout_s=30)
        return int(msgspec.json.decode(record.output))

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        fast = Backoff(initial_s=0.1, max_s=0.1, jitter=0.0)
        submitted = await client.submit("parent", 4, backoff=fast)
        done = await client.wait(submitted.task_id, timeout_s=30)
    assert done.status == "succeeded" and msgspec.json.decode(done.output) == 40
    assert len(done.attempts) == 2
    assert done.children == [derived_id(submitted.task_id, "sub/0")]
    assert child_runs == done.children


async def test_subtasks_need_a_live_parent(bus: Bus, bus_settings: BusSettings) -> None:
    async with running_scheduler(bus), agent_running(worker("sub-4").agent, bus_settings):
        client = Client(bus)
        finished = await client.submit("work", 1)
        await client.wait(finished.task_id, timeout_s=20)
        with pytest.raises(ConflictError, match="succeeded"):
            await client.submit("work", 2, parent_id=finished.task_id)
        with pytest.raises(NotFoundError, match="parent"):
            await client.submit("work", 3, parent_id="no-such-parent")


async def test_handoff_passes_the_work_and_wait_follows_it(
    bus: Bus, bus_settings: BusSettings
) -> None:
    agent = Agent("desk", max_concurrency=2, settings=quick_settings("sub-5"))

    @agent.handler("triage")
    async def triage(ctx: TaskContext, ticket: dict[str, str]) -> Any:
        return await ctx.handoff(ticket["team"], metadata={"triaged_by": ctx.agent_id})

    @agent.handler("billing")
    async def billing(ctx: TaskContext, ticket: dict[str, str]) -> dict[str, Any]:
        return {"handled": ticket["text"], "metadata": ctx.task.metadata, "from": ctx.task_id}

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        ticket = {"team": "billing", "text": "refund please"}
        source = await client.submit("triage", ticket, metadata={"customer": "c-7"}, priority=3)
        final = await client.wait(source.task_id, timeout_s=30)
        first = await client.get(source.task_id)
        unfollowed = await client.wait(source.task_id, timeout_s=5, follow_handoffs=False)
    target = derived_id(source.task_id, "handoff/billing")
    assert first.status == "succeeded" and first.handoff_to == target
    assert msgspec.json.decode(first.output, type=Handoff) == Handoff(
        handoff_to=target, capability="billing"
    )
    assert unfollowed.task_id == source.task_id
    assert final.task_id == target and final.handoff_from == source.task_id
    assert final.status == "succeeded" and final.priority == 3
    out = msgspec.json.decode(final.output)
    assert out["handled"] == "refund please"
    assert out["metadata"] == {"customer": "c-7", "triaged_by": "sub-5"}


async def test_cancelling_a_task_that_handed_off_cancels_where_the_work_went(
    bus: Bus, bus_settings: BusSettings
) -> None:
    agent = Agent("desk", max_concurrency=2, settings=quick_settings("sub-6"))
    stopped: list[str] = []

    @agent.handler("triage")
    async def triage(ctx: TaskContext, value: Any) -> Any:
        return await ctx.handoff("slow")

    @agent.handler("slow")
    async def slow(ctx: TaskContext, value: Any) -> Any:
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            stopped.append(ctx.task_id)
            raise

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        source = await client.submit("triage", "x")
        target = derived_id(source.task_id, "handoff/slow")

        async def slow_running() -> bool:
            try:
                return (await client.get(target)).status == "running"
            except NotFoundError:
                return False

        await eventually(slow_running, what="hand-off target running")
        reply = await client.cancel(source.task_id)
        final = await client.wait(source.task_id, timeout_s=20)
        await eventually(lambda: asyncio.sleep(0, stopped == [target]), what="slow cancelled")
    assert reply.task.status == "succeeded"  # the source had already handed off
    assert reply.cancelled == [target]
    assert final.task_id == target and final.status == "cancelled"


async def test_a_repeated_submit_heals_a_crash_between_record_and_publish(bus: Bus) -> None:
    # The scheduler died after creating the child's record, before linking and
    # publishing it: the caller's retry (same task id) must finish the job.
    async with running_scheduler(bus):
        client = Client(bus)
        parent = await client.submit("work", None)  # no agent: stays queued
        request = await client.build_task("work", 7, parent_id=parent.task_id)
        assert request.task_id is not None
        kv = await bus.kv(bus.names.tasks_bucket)
        await kv.create(request.task_id, encode(new_record(request, request.task_id)))
        healed = await client.submit_request(request)
        linked = await client.get(parent.task_id)
        info = await bus.js.stream_info(bus.names.tasks_stream)
    assert healed.status == "queued" and healed.stream_seq is None  # the stored record
    assert linked.children == [request.task_id]
    assert info.state.messages == 2
    stored = await client.get(request.task_id)
    assert stored.stream_seq is not None
