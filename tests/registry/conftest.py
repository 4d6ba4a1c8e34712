from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus_registry.settings import RegistrySettings
from tests._harness.registry import Registry, start_registry


@pytest.fixture
async def registry_service(bus: Bus) -> AsyncIterator[Registry]:
    stop = asyncio.Event()
    reg = await start_registry(bus, RegistrySettings(gauge_refresh_s=0.1), stop)
    yield reg
    stop.set()
    await asyncio.wait_for(reg.task, 10)
