"""Services in-process and as processes for the tests: a service task until ready, the
scheduler, ``python -m agentbus_<service>`` processes, process liveness."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import GetTask, TaskReply
from agentbus_scheduler.service import serve as serve_scheduler
from agentbus_scheduler.settings import SchedulerSettings
from tests._harness.polling import answers, eventually


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


@asynccontextmanager
async def running_scheduler(
    bus: Bus, registry: CollectorRegistry | None = None, *, probe: Bus | None = None
) -> AsyncIterator[CollectorRegistry]:
    """Run the scheduler in-process on ``bus`` until the block ends; ready on entry.

    ``probe``: the connection that asks whether it answers (default ``bus``; with auth
    on, the scheduler's own identity may not call itself).
    """
    registry = registry or CollectorRegistry()
    settings = SchedulerSettings(place_interval_s=0.5, results_fetch_timeout_s=0.2)
    get = bus.names.endpoint("scheduler", "get")
    asker = probe or bus
    async with serving(
        lambda stop: serve_scheduler(bus, stop, settings, registry),
        lambda: answers(lambda: asker.request(get, GetTask(task_id="x"), TaskReply)),
        what="scheduler",
    ):
        yield registry


@dataclass
class Scheduler:
    registry: CollectorRegistry
    client: Client

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


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


def end_processes(procs: list[subprocess.Popen[bytes]], *, grace_s: float = 20.0) -> None:
    """SIGTERM each process still running, SIGKILL it after ``grace_s``; reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
