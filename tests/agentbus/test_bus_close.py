"""A bus closes cleanly when its server has gone (an agent stopping during an outage)."""

from __future__ import annotations

import pytest

from agentbus.bus import Bus
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


async def _reconnecting(bus: Bus) -> bool:
    return bool(bus.nc.is_reconnecting)


@pytest.mark.timeout(60)
async def test_close_while_the_server_is_gone_does_not_raise() -> None:
    server = NatsServer().start()
    try:
        bus = await Bus.connect(
            BusSettings(nats_url=server.client_url, prefix="closing"), name="test-close"
        )
        server.stop()
        await eventually(lambda: _reconnecting(bus), what="the client is reconnecting")
        await bus.close()  # nats-py's drain raises ConnectionReconnectingError here
        assert bus.nc.is_closed
    finally:
        server.stop()


@pytest.mark.timeout(60)
async def test_close_with_messages_buffered_while_reconnecting_does_not_raise() -> None:
    # nats-py flushes what it buffered while reconnecting to the old, dead socket on
    # close; that write fails with the socket's error (ConnectionResetError in CI).
    server = NatsServer().start()
    try:
        bus = await Bus.connect(
            BusSettings(nats_url=server.client_url, prefix="closing"), name="test-close"
        )
        server.stop()
        await eventually(lambda: _reconnecting(bus), what="the client is reconnecting")
        await bus.nc.publish("closing.buffered", b"x" * 1024)
        await bus.close()
        assert bus.nc.is_closed
        assert bus.closed.is_set()
    finally:
        server.stop()
