from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from agentbus.auth.tokens import SCOPES, create_token
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack


@pytest.fixture(scope="package")
def stack() -> Iterator[EmbeddedStack]:
    """nats-server and the five services as processes (auth on), shared by the
    dashboard test modules (each test uses names of its own)."""
    running = EmbeddedStack(runtime="process", prefix=f"dash{uuid.uuid4().hex[:6]}")
    asyncio.run(running.start())
    try:
        yield running
    finally:
        asyncio.run(running.stop())


@pytest.fixture
async def client(stack: EmbeddedStack) -> AsyncIterator[Client]:
    """An operator client of the stack."""
    bus = await Bus.connect(stack.settings)
    yield Client(bus)
    await bus.close()


@pytest.fixture
async def secret(client: Client) -> str:
    """A token with every scope (its full text), named ``dashboard-test``."""
    _, text = await create_token(client.bus, "dashboard-test", SCOPES)
    return text


@pytest.fixture
async def http(stack: EmbeddedStack, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the stack's gateway carrying ``secret``."""
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=headers) as c:
        yield c
