from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.client import Client
from tests._helpers import running_scheduler


@dataclass
class Scheduler:
    registry: CollectorRegistry
    client: Client

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def scheduler(bus: Bus) -> AsyncIterator[Scheduler]:
    async with running_scheduler(bus) as registry:
        yield Scheduler(registry=registry, client=Client(bus))
