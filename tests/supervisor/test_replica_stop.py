"""A replica stops even when its loop's cancellation is swallowed inside nats-py.

nats-py can turn a cancellation that lands inside a request (an acked publish) into a
``TimeoutError``; the runner's best-effort event publish used to swallow it and its
loop carried on into watching the new instance, so ``stop()`` hung and, with it, the
supervisor's shutdown (seen in CI: tests/scheduler/test_multinode.py, a replica unplaced
while it was starting). The bus here is the real one; only ``publish_event`` is
wrapped to behave as nats-py does when cancelled mid-request.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import Deployment
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.process_runtime import ProcessRuntime
from agentbus_supervisor.replica import ReplicaRunner, RunnerContext
from agentbus_supervisor.runtime import build_spec

pytestmark = pytest.mark.nats

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


class CancelSwallowingBus:
    """The real bus, whose ``publish_event`` turns a cancellation into ``TimeoutError``."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.publishing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish_event(self, entity: str, kind: str, event: Any) -> None:
        self.publishing.set()
        try:
            await asyncio.sleep(0.5)  # a slow request: the stop lands in it
            await self._bus.publish_event(entity, kind, event)
        except asyncio.CancelledError:
            raise TimeoutError("nats: timeout") from None  # what nats-py may do


@pytest.mark.timeout(60)
async def test_stop_ends_the_loop_although_nats_swallowed_the_cancel(bus: Bus) -> None:
    runtime = ProcessRuntime()
    proxy = CancelSwallowingBus(bus)
    ctx = RunnerContext(
        bus=cast(Bus, proxy),  # a proxy of a Bus: it forwards every other attribute
        runtime=runtime,
        node_id="n1",
        metrics=SupervisorMetrics(CollectorRegistry()),
    )
    deployment = Deployment(name="sleeper", replicas=1, command=SLEEPER, stop_grace_s=1.0)
    spec = build_spec(
        deployment,
        0,
        node_id="n1",
        prefix=bus.names.prefix,
        nats_url=bus.settings.nats_url,
        runtime="process",
    )
    runner = ReplicaRunner(ctx, spec, deployment)
    try:
        runner.start()
        await asyncio.wait_for(proxy.publishing.wait(), 20)  # the "started" event
        stopping = asyncio.create_task(runner.stop())
        done, _ = await asyncio.wait({stopping}, timeout=15)  # not wait_for: it cancels
        if not done:
            stopping.cancel()
        assert stopping in done, "stop() hung: the loop outlived its cancellation"
        await stopping
        assert runner.reason == "unplaced"
        assert runner.handle is not None
        assert runner.handle.runtime_id not in runtime._children  # the process was stopped
    finally:
        await runtime.close()
