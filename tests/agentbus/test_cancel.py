"""Cancellation: queued tasks never start, running handlers stop, subtrees follow.

Real scheduler (in-process), real agent runtime on its own connection, real
nats-server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.client import Client
from agentbus.errors import ConflictError, NotFoundError
from agentbus.messages import CancelNotice, CancelReply, Task, TaskRecord, encode, utcnow
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, quick_settings, worker
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


async def stream_messages(bus: Bus) -> int:
    info = await bus.js.stream_info(bus.names.tasks_stream)
    return info.state.messages


async def stream_empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0


async def status_is(client: Client, task_id: str, status: str) -> TaskRecord | None:
    record = await client.get(task_id)
    return record if record.status == status else None


async def test_queued_task_never_starts(bus: Bus, bus_settings: BusSettings) -> None:
    w = worker("cancel-1")
    async with running_scheduler(bus), agent_running(w.agent, bus_settings):
        client = Client(bus)
        blocker = await client.submit("work", "blocker")
        runs = [blocker.task_id]
        await eventually(lambda: asyncio.sleep(0, w.started == runs), what="blocker runs")
        victim = await client.submit("work", "victim", priority=5)
        assert victim.stream_seq is not None
        reply = await client.cancel(victim.task_id)
        assert reply.cancelled == [victim.task_id]
        assert reply.task.status == "cancelled" and reply.task.attempts == []
        # its message is gone from the work stream: only the blocker's remains
        assert await stream_messages(bus) == 1
        w.gate.set()
        after = await client.submit("work", "after")
        assert (await client.wait(after.task_id, timeout_s=20)).status == "succeeded"
        assert (await client.wait(blocker.task_id, timeout_s=20)).status == "succeeded"
        final = await client.get(victim.task_id)
    assert w.started == [blocker.task_id, after.task_id]
    assert final.status == "cancelled" and final.attempts == []


async def test_running_handler_is_cancelled_and_the_task_ends_cancelled(
    bus: Bus, bus_settings: BusSettings
) -> None:
    cancelled_at: list[float] = []
    agent = Agent("worker", max_concurrency=1, settings=quick_settings("cancel-2"))

    @agent.handler("work")
    async def work(ctx: TaskContext, value: Any) -> Any:
        if value == "forever":
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                cancelled_at.append(time.monotonic())
                raise
        return value

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        record = await client.submit("work", "forever")
        await eventually(lambda: status_is(client, record.task_id, "running"), what="running")
        asked = time.monotonic()
        reply = await client.cancel(record.task_id, reason="user changed their mind")
        assert reply.cancelled == [record.task_id]
        assert reply.task.status == "cancelled"
        await eventually(lambda: asyncio.sleep(0, bool(cancelled_at)), what="handler cancelled")
        print(f"handler cancelled {cancelled_at[0] - asked:.3f} s after the cancel request")
        # the agent reported the cancelled attempt and terminated the message
        await eventually(lambda: asyncio.sleep(0, agent._in_flight == set()), what="slot freed")
        assert await stream_messages(bus) == 0
        # the agent's slot is free again
        nxt = await client.submit("work", "next")
        assert (await client.wait(nxt.task_id, timeout_s=20)).status == "succeeded"
        final = await client.wait(record.task_id, timeout_s=5)
    assert final.status == "cancelled"
    assert final.error is not None and final.error.message == "user changed their mind"
    assert [a.status for a in final.attempts] == ["cancelled"]


async def test_cancelling_a_parent_cancels_its_whole_subtree(
    bus: Bus, bus_settings: BusSettings
) -> None:
    running: set[str] = set()
    stopped: set[str] = set()
    agent = Agent("tree", max_concurrency=8, settings=quick_settings("cancel-3"))

    async def hold(ctx: TaskContext) -> None:
        running.add(ctx.task_id)
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            stopped.add(ctx.task_id)
            raise

    @agent.handler("root")
    async def root(ctx: TaskContext, value: Any) -> Any:
        await ctx.submit("mid", "a")
        await ctx.submit("mid", "b")
        await hold(ctx)

    @agent.handler("mid")
    async def mid(ctx: TaskContext, value: str) -> Any:
        await ctx.submit("leaf", value)
        await hold(ctx)

    @agent.handler("leaf")
    async def leaf(ctx: TaskContext, value: str) -> Any:
        await hold(ctx)

    async with running_scheduler(bus), agent_running(agent, bus_settings):
        client = Client(bus)
        top = await client.submit("root", None)
        await eventually(lambda: asyncio.sleep(0, len(running) == 5), what="5 tasks running")
        parent = await client.get(top.task_id)
        assert len(parent.children) == 2
        mids = [await client.get(c) for c in parent.children]
        assert all(m.parent_id == top.task_id and len(m.children) == 1 for m in mids)
        leaves = [m.children[0] for m in mids]

        reply = await client.cancel(top.task_id)
        assert set(reply.cancelled) == {top.task_id, *parent.children, *leaves}
        assert reply.cancelled[0] == top.task_id
        await eventually(lambda: asyncio.sleep(0, stopped == running), what="all handlers stop")
        records = [await client.get(t) for t in reply.cancelled]
        # a subtask of a cancelled task cannot be added any more
        late = await client.build_task("leaf", "late", parent_id=top.task_id)
        with pytest.raises(ConflictError, match="cancelled"):
            await client.submit_request(late)
    assert {r.status for r in records} == {"cancelled"}


async def test_cancel_of_a_finished_task_changes_nothing(
    bus: Bus, bus_settings: BusSettings
) -> None:
    async with running_scheduler(bus), agent_running(worker("cancel-4").agent, bus_settings):
        client = Client(bus)
        record = await client.submit("work", 5)
        done = await client.wait(record.task_id, timeout_s=20)
        reply = await client.cancel(record.task_id)
        with pytest.raises(NotFoundError):
            await client.cancel("no-such-task")
    assert reply.cancelled == []
    assert reply.task.status == "succeeded" and reply.task.output == done.output


async def test_delivery_that_raced_the_cancel_notice_is_terminated_unstarted(
    bus: Bus, bus_settings: BusSettings
) -> None:
    # The notice reaches the agent before the task does (e.g. the message was
    # published just before its record was cancelled): the agent terms it unstarted.
    w = worker("cancel-5", rescan_s=0.3)
    async with agent_running(w.agent, bus_settings):
        await asyncio.sleep(0.5)
        notice = CancelNotice(task_ids=["raced"], at=utcnow())
        await bus.nc.publish(bus.names.cancel_subject(), encode(notice))
        await bus.nc.flush()
        await asyncio.sleep(0.2)
        for task_id in ("raced", "fine"):
            task = Task(task_id=task_id, capability="work")
            await bus.js.publish(bus.names.task_subject("work"), encode(task))
        await eventually(lambda: asyncio.sleep(0, w.started == ["fine"]), what="fine handled")
        await eventually(lambda: stream_empty(bus), what="raced termed")
    assert w.started == ["fine"]


def cli(bus_settings: BusSettings, *args: str) -> Any:
    return CliRunner().invoke(
        app, [*args, "--nats-url", bus_settings.nats_url, "--prefix", bus_settings.prefix]
    )


async def test_cli_cancel(bus: Bus, bus_settings: BusSettings) -> None:
    async with running_scheduler(bus):  # no agent: the tasks stay queued
        client = Client(bus)
        parent = await client.submit("work", 1)
        child = await client.submit("work", 2, parent_id=parent.task_id)
        only = await asyncio.to_thread(cli, bus_settings, "cancel", parent.task_id, "--only")
        child_after = await client.get(child.task_id)
        done = await asyncio.to_thread(cli, bus_settings, "cancel", child.task_id)
        again = await asyncio.to_thread(cli, bus_settings, "cancel", child.task_id)
        unknown = await asyncio.to_thread(cli, bus_settings, "cancel", "no-such-task")
        remaining = await stream_messages(bus)
    assert only.exit_code == 0, only.output
    reply = msgspec.json.decode(only.stdout, type=CancelReply)
    assert reply.cancelled == [parent.task_id] and reply.task.status == "cancelled"
    assert child_after.status == "queued"  # --only: the subtask was left alone
    assert done.exit_code == 0, done.output
    assert msgspec.json.decode(done.stdout, type=CancelReply).cancelled == [child.task_id]
    assert again.exit_code == 0  # already cancelled: still cancelled, nothing new
    assert msgspec.json.decode(again.stdout, type=CancelReply).cancelled == []
    assert unknown.exit_code == 1 and "not found" in unknown.stderr
    assert remaining == 0
