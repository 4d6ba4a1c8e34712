from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from agentbus.embedded import EmbeddedStack


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    """nats-server and the five services as processes (auth on), one per module."""
    running = EmbeddedStack(runtime="process", prefix=f"dash{uuid.uuid4().hex[:6]}")
    asyncio.run(running.start())
    try:
        yield running
    finally:
        asyncio.run(running.stop())
