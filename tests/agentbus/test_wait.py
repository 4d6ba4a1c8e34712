"""Waiting for tasks from the library: one, many in completion order, all, first.

Real scheduler (in-process), a real agent on its own connection, real nats-server.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import RequestTimeoutError
from agentbus.messages import encode
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, sleeper
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


async def test_wait_many_yields_in_completion_order(bus: Bus, bus_settings: BusSettings) -> None:
    async with running_scheduler(bus), agent_running(sleeper("wait-1"), bus_settings):
        client = Client(bus)
        # Gaps wider than the intake's 1 s rescan: a start delayed by load keeps the order.
        delays = [4.5, 0.0, 3.0, 1.5]
        ids = [(await client.submit("sleep", d)).task_id for d in delays]
        seen = [r.task_id async for r in client.wait_many(ids, timeout_s=30)]
        in_order = await client.wait_all(ids, timeout_s=30)
        first = await client.wait_first(ids, timeout_s=30)  # all done: any of them
    by_delay = [t for _, t in sorted(zip(delays, ids, strict=True))]
    assert seen == by_delay
    assert [r.task_id for r in in_order] == ids
    assert first.task_id in ids and first.status == "succeeded"


async def test_wait_first_returns_the_first_to_finish(bus: Bus, bus_settings: BusSettings) -> None:
    async with running_scheduler(bus), agent_running(sleeper("wait-2"), bus_settings):
        client = Client(bus)
        slow = await client.submit("sleep", 30.0)
        fast = await client.submit("sleep", 0.1)
        first = await client.wait_first([slow.task_id, fast.task_id], timeout_s=20)
        with pytest.raises(RequestTimeoutError):
            await client.wait(slow.task_id, timeout_s=0.3)
        await client.cancel(slow.task_id)
    assert first.task_id == fast.task_id


async def test_a_task_already_finished_is_returned_at_once(
    bus: Bus, bus_settings: BusSettings
) -> None:
    async with running_scheduler(bus), agent_running(sleeper("wait-3"), bus_settings):
        client = Client(bus)
        record = await client.submit("sleep", 0.0)
        done = await client.wait(record.task_id, timeout_s=20)
        again = await client.wait(record.task_id, timeout_s=1)
        many = await client.wait_all([record.task_id] * 2, timeout_s=1)
    assert again == done
    assert many == [done, done]


async def test_a_refused_terminal_write_does_not_end_a_wait(bus: Bus) -> None:
    # A core subscriber on the record's KV subject also hears compare-and-set writes
    # that the stream refuses (a result that lost the race against a cancel): the
    # waiter must return the stored record, never the refused one.
    async with running_scheduler(bus):  # no agent: the task stays queued
        client = Client(bus)
        record = await client.submit("sleep", 1.0)
        waiter = asyncio.create_task(client.wait(record.task_id, timeout_s=20))
        await asyncio.sleep(0.3)  # the waiter is subscribed and has read the record
        kv = await bus.kv(bus.names.tasks_bucket)
        entry = await kv.get(record.task_id)
        assert entry.revision is not None
        forged = msgspec.structs.replace(record, status="succeeded")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.update(record.task_id, encode(forged), last=entry.revision - 1)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await client.cancel(record.task_id)
        done = await waiter
    assert done.status == "cancelled"


async def test_waiting_for_many_tasks_at_once(bus: Bus, bus_settings: BusSettings) -> None:
    # above 64 tasks the waiter follows every task event instead of one subject each
    async with running_scheduler(bus), agent_running(sleeper("wait-4"), bus_settings):
        client = Client(bus)
        for count in (5, 80):
            replies = await client.submit_many(
                [await client.build_task("sleep", 0.0) for _ in range(count)]
            )
            ids = [r.task.task_id for r in replies]
            records = await client.wait_all(ids, timeout_s=60)
            assert [r.task_id for r in records] == ids
            assert {r.status for r in records} == {"succeeded"}
