"""A bus closes cleanly when its server has gone (an agent stopping during an outage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agentbus.bus import Bus
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


@asynccontextmanager
async def _reconnecting_bus() -> AsyncIterator[Bus]:
    """A bus whose server has just stopped: nats-py is reconnecting."""
    server = NatsServer().start()
    try:
        bus = await Bus.connect(
            BusSettings(nats_url=server.client_url, prefix="closing"), name="test-close"
        )
        server.stop()
        await eventually(lambda: bool(bus.nc.is_reconnecting), what="the client is reconnecting")
        yield bus
    finally:
        server.stop()


@pytest.mark.timeout(60)
async def test_close_while_the_server_is_gone_does_not_raise() -> None:
    async with _reconnecting_bus() as bus:
        await bus.close()  # nats-py's drain raises ConnectionReconnectingError here
        assert bus.nc.is_closed


@pytest.mark.timeout(60)
async def test_close_with_messages_buffered_while_reconnecting_does_not_raise() -> None:
    # nats-py flushes what it buffered while reconnecting to the old, dead socket on
    # close; that write fails with the socket's error (ConnectionResetError in CI).
    async with _reconnecting_bus() as bus:
        await bus.nc.publish("closing.buffered", b"x" * 1024)
        await bus.close()
        assert bus.nc.is_closed
        assert bus.closed.is_set()
