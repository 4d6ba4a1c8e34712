from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus.state.checkpoints import CheckpointClient
from tests._harness.checkpoint import Service, running_checkpoint


@pytest.fixture
async def svc(bus: Bus) -> AsyncIterator[Service]:
    async with running_checkpoint(bus) as service:
        yield service


@pytest.fixture
def client(svc: Service) -> CheckpointClient:
    return svc.client()
