"""/healthz follows the NATS connection: 503 while the server is gone."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agentbus.bus import Bus
from agentbus.settings import BusSettings
from tests._harness.gateway import start_gateway, stop_gateway
from tests._harness.nats_server import NatsServer

pytestmark = pytest.mark.nats


@pytest.mark.timeout(60)
async def test_healthz_is_503_while_nats_is_down(prefix: str) -> None:
    server = NatsServer().start()
    bus = await Bus.connect(BusSettings(nats_url=server.client_url, prefix=prefix), name="t")
    try:
        await bus.ensure()
        gw = await start_gateway(bus)
        try:
            r = await gw.http.get("/healthz")
            assert r.status_code == 200
            await asyncio.to_thread(server.stop)
            for _ in range(200):
                r = await gw.http.get("/healthz")
                if r.status_code != 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert r.json()["nats"] in {"reconnecting", "disconnected"}
        finally:
            await stop_gateway(gw)
    finally:
        with contextlib.suppress(ConnectionResetError):  # nats-py flushes on close
            await bus.nc.close()
        server.stop()
