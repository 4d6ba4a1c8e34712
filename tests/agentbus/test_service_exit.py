"""A service whose NATS connection is closed for good exits non-zero (to be restarted).

nats-server answers some protocol errors with ``-ERR`` and closes the connection;
nats-py then closes for good instead of reconnecting (any ``-ERR`` but a stale
connection or a permission denial). Here the server's ``max_payload`` is lowered by a
config reload, and a ping makes the service publish a reply over it: the server
closes its connection ("maximum payload violation") exactly as it did for the
over-long task ids ("maximum control line exceeded"). Each service runs as a real
process (``python -m agentbus_<service>``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.service import EXIT_CONNECTION_LOST
from agentbus.service.health import ping, probe
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually
from tests._harness.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = {
    "registry": {},
    "scheduler": {},
    "checkpoint": {},
    "gateway": {"GATEWAY_PORT": "0", "GATEWAY_HOST": "127.0.0.1"},
    "supervisor": {"SUPERVISOR_RUNTIME": "process", "SUPERVISOR_NODE_ID": "exit-n1"},
    # No database needed: losing NATS must end it all the same.
    "archiver": {"AGENTBUS_AUDIT_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "js", config="max_payload: 1048576\n") as srv:
        yield srv


@pytest.mark.timeout(90)
@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_service_exits_nonzero_when_its_connection_is_closed_for_good(
    service: str, server: NatsServer, tmp_path: Path
) -> None:
    settings = BusSettings(nats_url=server.client_url, prefix="exit", request_timeout_s=5.0)
    log = tmp_path / f"{service}.log"
    proc = spawn_service(service, server.client_url, "exit", log, SERVICES[service])
    bus = await Bus.connect(settings, name="test-exit")
    try:
        pid = str(proc.pid)

        async def answering() -> bool:
            assert proc.poll() is None, log.read_text()
            replies = await ping(bus, service, timeout_s=0.5)
            return any(r["metadata"].get("pid") == pid for r in replies)

        await eventually(answering, timeout_s=30, what=f"{service} answers $SRV.PING")
        host = os.uname().nodename
        assert await probe(settings, service, host=host, timeout_s=2.0)

        # A ping reply (~300 bytes) is now too large. SIGHUP applies the new limit some
        # time later, so keep pinging until the service's reply breaks it.
        server.reload("max_payload: 16\n")

        async def exited() -> int | None:
            if (code := proc.poll()) is None:
                with contextlib.suppress(Exception):
                    await ping(bus, service, timeout_s=0.5)
            return code

        code = await eventually(exited, timeout_s=30, what=f"{service} exits")
        text = log.read_text()
        assert code == EXIT_CONNECTION_LOST, text
        assert "NATS connection closed for good" in text
        assert not await probe(settings, service, host=host, timeout_s=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await bus.close()
