from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.checkpoints import CheckpointClient
from agentbus.errors import NotFoundError, UnavailableError
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings
from tests._helpers import eventually


@dataclass
class Service:
    bus: Bus
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def client(self, agent_id: str = "agent-1") -> CheckpointClient:
        return CheckpointClient(self.bus, agent_id)


@asynccontextmanager
async def running_checkpoint(
    bus: Bus, settings: CheckpointSettings | None = None
) -> AsyncIterator[Service]:
    """The checkpoint service in-process on ``bus``; ready on entry."""
    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(serve(bus, stop, settings or CheckpointSettings(), registry))
    service = Service(bus, registry)

    async def ready() -> bool:
        if task.done():
            task.result()
        try:
            await service.client("probe").get("probe")
        except NotFoundError:
            return True
        except UnavailableError:
            return False
        return True

    try:
        await eventually(ready, timeout_s=10, what="checkpoint service ready")
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def svc(bus: Bus) -> AsyncIterator[Service]:
    async with running_checkpoint(bus) as service:
        yield service


@pytest.fixture
def client(svc: Service) -> CheckpointClient:
    return svc.client()
