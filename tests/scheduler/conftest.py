from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import NotFoundError, UnavailableError
from agentbus.messages import GetTask, TaskReply
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings


@dataclass
class Scheduler:
    registry: CollectorRegistry
    client: Client

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def scheduler(bus: Bus) -> AsyncIterator[Scheduler]:
    stop = asyncio.Event()
    registry = CollectorRegistry()
    settings = SchedulerSettings(place_interval_s=0.5, results_fetch_timeout_s=0.2)
    task = asyncio.create_task(serve(bus, stop, settings, registry))
    client = Client(bus)
    # Ready once the get endpoint of this prefix answers.
    for _ in range(200):
        if task.done():
            task.result()
        try:
            await bus.request(
                bus.names.endpoint("scheduler", "get"), GetTask(task_id="x"), TaskReply
            )
        except NotFoundError:
            break
        except UnavailableError:
            await asyncio.sleep(0.05)
    yield Scheduler(registry=registry, client=client)
    stop.set()
    await asyncio.wait_for(task, 10)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
