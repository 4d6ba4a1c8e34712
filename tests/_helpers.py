"""Helpers shared by the test packages: polling, running a service in-process, processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

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
async def serving(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    ready: Callable[[], Awaitable[bool]],
    *,
    what: str,
    ready_timeout_s: float = 10.0,
    stop_timeout_s: float = 15.0,
) -> AsyncIterator[None]:
    """Run ``main(stop)`` as a task until the block ends; ``ready()`` is true on entry.

    A service that dies before it is ready fails the test with its own error; at the
    end ``stop`` is set and the task must end within ``stop_timeout_s``.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop))

    async def started() -> bool:
        if task.done():
            task.result()  # raises what the service died of
        return await ready()

    try:
        await eventually(started, timeout_s=ready_timeout_s, what=f"{what} ready")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout_s)


async def answers(request: Callable[[], Awaitable[object]]) -> bool:
    """Whether a service answers ``request()``: a reply or a not-found error does."""
    try:
        await request()
    except NotFoundError:
        return True
    except UnavailableError:  # no responder yet
        return False
    return True


@asynccontextmanager
async def running_scheduler(
    bus: Bus, registry: CollectorRegistry | None = None
) -> AsyncIterator[CollectorRegistry]:
    """Run the scheduler in-process on ``bus`` until the block ends; ready on entry."""
    registry = registry or CollectorRegistry()
    settings = SchedulerSettings(place_interval_s=0.5, results_fetch_timeout_s=0.2)
    get = bus.names.endpoint("scheduler", "get")
    async with serving(
        lambda stop: serve_scheduler(bus, stop, settings, registry),
        lambda: answers(lambda: bus.request(get, GetTask(task_id="x"), TaskReply)),
        what="scheduler",
    ):
        yield registry


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def spawn_service(
    service: str, nats_url: str, prefix: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m agentbus_<service>`` on ``nats_url``/``prefix``; output to ``log``."""
    full_env = {
        **os.environ,
        **(env or {}),
        "AGENTBUS_NATS_URL": nats_url,
        "AGENTBUS_PREFIX": prefix,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"agentbus_{service}"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
