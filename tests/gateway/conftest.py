from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from tests._harness.gateway import Gateway, start_gateway, stop_gateway
from tests._harness.services import running_scheduler


@pytest.fixture
async def scheduler(bus: Bus) -> AsyncIterator[None]:
    async with running_scheduler(bus):
        yield


@pytest.fixture
async def gateway(bus: Bus) -> AsyncIterator[Gateway]:
    gw = await start_gateway(bus)
    yield gw
    await stop_gateway(gw)
