from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from tests._harness.services import Scheduler, running_scheduler


@pytest.fixture
async def scheduler(bus: Bus) -> AsyncIterator[Scheduler]:
    async with running_scheduler(bus) as registry:
        yield Scheduler(registry=registry, client=Client(bus))
