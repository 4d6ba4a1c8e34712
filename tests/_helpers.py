"""Helpers shared by the test packages: polling, and running a service in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.errors import NotFoundError, UnavailableError
from agentbus.messages import GetTask, TaskReply
from agentbus_scheduler.service import serve as serve_scheduler
from agentbus_scheduler.settings import SchedulerSettings

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = 20.0,
    every_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy and return it; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"{what} not met within {timeout_s} s (last: {last!r})")


@asynccontextmanager
async def running_scheduler(
    bus: Bus, registry: CollectorRegistry | None = None
) -> AsyncIterator[CollectorRegistry]:
    """Run the scheduler in-process on ``bus`` until the block ends; ready on entry."""
    stop = asyncio.Event()
    registry = registry or CollectorRegistry()
    settings = SchedulerSettings(place_interval_s=0.5, results_fetch_timeout_s=0.2)
    task = asyncio.create_task(serve_scheduler(bus, stop, settings, registry))

    async def ready() -> bool:
        if task.done():
            task.result()  # raises the scheduler's start-up error
        try:
            await bus.request(
                bus.names.endpoint("scheduler", "get"), GetTask(task_id="x"), TaskReply
            )
        except NotFoundError:
            return True
        except UnavailableError:
            return False
        return True

    try:
        await eventually(ready, timeout_s=10, what="scheduler ready")
        yield registry
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
