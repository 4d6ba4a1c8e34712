"""``nats_servers_in_order``: a process lists its own host's server first and stays on it.

Two separate servers: with the setting, every connect goes to the first URL and a
reconnect after its loss goes to the next; without it, nats-py shuffles the list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.bus.dial import bus_env
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


async def test_connects_to_the_listed_servers_in_order(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "a").start()
    second = NatsServer(tmp_path / "b").start()
    try:
        urls = f"{first.client_url},{second.client_url}"
        settings = BusSettings(nats_url=urls, nats_servers_in_order=True)
        for _ in range(8):  # shuffled, 8 connects all landing on the first: 1 in 256
            bus = await Bus.connect(settings)
            try:
                assert bus.nc.connected_url is not None
                assert bus.nc.connected_url.port == first.port
            finally:
                await bus.close()
        bus = await Bus.connect(settings)
        try:
            first.stop()

            def on_second() -> bool:
                url = bus.nc.connected_url
                return bus.nc.is_connected and url is not None and url.port == second.port

            await eventually(on_second, timeout_s=15, what="reconnected to the second")
        finally:
            await bus.close()
    finally:
        first.stop()
        second.stop()


def test_supervisors_pass_the_order_to_their_agents() -> None:
    assert bus_env(BusSettings(nats_servers_in_order=True)) == {
        "AGENTBUS_NATS_SERVERS_IN_ORDER": "true"
    }
    assert bus_env(BusSettings()) == {}
