"""Tasks on a three-server cluster (R3): a waiter hears every task's end.

On a cluster a record read may be answered by a follower that has not applied the
last write, and a subscription's interest reaches the other servers a moment after it
is made: ``TaskWaits.wait_one`` must not depend on its periodic re-read to learn that
a task ended (``leader_read``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.bus.contract import cluster_size
from agentbus.client import Client
from agentbus.client.waits import TaskWaits
from agentbus.embedded import EmbeddedStack
from tests._harness.agents import agent_running, worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TASKS = 150


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(cluster=3, runtime="process", prefix="clt")
    asyncio.run(s.start())
    try:
        yield s
    finally:
        asyncio.run(s.stop())


async def test_every_wait_hears_its_task_end_without_a_reread(stack: EmbeddedStack) -> None:
    w = worker("clt-worker-1")
    async with agent_running(w.agent, stack.settings):
        bus = await Bus.connect(stack.settings)
        try:
            assert cluster_size(bus) == 3
            client, waits = Client(bus), TaskWaits(bus)
            for i in range(TASKS):
                record = await client.submit("work", i)
                # A re-read only after 120 s: a missed end would run out the timeout.
                done = await waits.wait_one(record.task_id, timeout_s=30, recheck_s=120)
                assert (done.status, msgspec.json.decode(done.output)) == ("succeeded", i)
        finally:
            await bus.close()
