"""The stack over TLS: nats-server requiring TLS and client certificates, the
scheduler, the registry, an agent, a client and the gateway (HTTPS) all on it."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid

import httpx
import pytest

from agentbus.auth.tls import TlsFiles
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import UnavailableError
from agentbus.settings import BusSettings
from agentbus_registry.settings import RegistrySettings
from tests._harness.agents import agent_running, worker
from tests._harness.gateway import start_gateway, stop_gateway
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually
from tests._harness.registry import start_registry
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.timeout(60)


def _settings(server: NatsServer, files: TlsFiles, **tls: object) -> BusSettings:
    values: dict[str, object] = {
        "nats_url": server.client_url,
        "prefix": f"t{uuid.uuid4().hex[:10]}",
        "tls_ca_file": files.ca_cert,
        "tls_cert_file": files.client_cert,
        "tls_key_file": files.client_key,
        "connect_timeout_s": 3.0,
    }
    values.update(tls)
    return BusSettings(**values)  # type: ignore[arg-type]


async def test_task_completes_over_tls(tls_server: NatsServer, tls_files: TlsFiles) -> None:
    assert tls_server.client_url.startswith("tls://")
    settings = _settings(tls_server, tls_files)
    bus = await Bus.connect(settings, name="test-tls")
    stop = asyncio.Event()
    try:
        await bus.ensure()
        registry = await start_registry(bus, RegistrySettings(gauge_refresh_s=0.1), stop)
        try:
            async with running_scheduler(bus), agent_running(worker("w-tls").agent, settings):
                client = Client(bus)
                await eventually(
                    lambda: _has_agent(client, "w-tls"), timeout_s=10, what="agent registered"
                )
                record = await client.submit("work", {"over": "tls"})
                done = await client.wait(record.task_id, timeout_s=20)
                assert done.status == "succeeded"
                assert await client.output(done) == {"over": "tls"}
                assert done.agent_id == "w-tls"
        finally:
            stop.set()
            await asyncio.wait_for(registry.task, 10)
    finally:
        await bus.close()


async def _has_agent(client: Client, agent_id: str) -> bool:
    return any(a.agent_id == agent_id for a in await client.agents())


async def test_plain_tcp_client_is_refused(tls_server: NatsServer) -> None:
    """A client speaking plain NATS protocol gets no further than the server's INFO."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert json.loads(info.split(b" ", 1)[1])["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert b"PONG" not in answer
        assert await asyncio.wait_for(reader.read(4096), 5) == b""  # closed by the server
    finally:
        writer.close()


async def test_wrong_ca_fails_with_a_clear_error(
    tls_server: NatsServer, tls_files: TlsFiles, other_ca: TlsFiles
) -> None:
    settings = _settings(tls_server, tls_files, tls_ca_file=other_ca.ca_cert)
    with pytest.raises(UnavailableError, match=r"TLS handshake .* failed.*AGENTBUS_TLS_CA_FILE"):
        await Bus.connect(settings)


async def test_missing_client_certificate_fails_with_a_clear_error(
    tls_server: NatsServer, tls_files: TlsFiles
) -> None:
    settings = _settings(tls_server, tls_files, tls_cert_file=None, tls_key_file=None)
    with pytest.raises(UnavailableError, match="AGENTBUS_TLS_CERT_FILE"):
        await Bus.connect(settings)


async def test_client_certificate_of_another_ca_is_refused(
    tls_server: NatsServer, tls_files: TlsFiles, other_ca: TlsFiles
) -> None:
    settings = _settings(
        tls_server,
        tls_files,
        tls_cert_file=other_ca.client_cert,
        tls_key_file=other_ca.client_key,
    )
    with pytest.raises(UnavailableError, match="TLS handshake"):
        await Bus.connect(settings)


async def test_tls_settings_refuse_a_plain_server(nats_url: str, tls_files: TlsFiles) -> None:
    """With TLS configured, a server that does not require it is not talked to at all."""
    settings = BusSettings(nats_url=nats_url, tls_ca_file=tls_files.ca_cert)
    with pytest.raises(UnavailableError, match="does not require it"):
        await Bus.connect(settings)
    tls_url = BusSettings(nats_url=nats_url.replace("nats://", "tls://"))
    with pytest.raises(UnavailableError, match="does not require it"):
        await Bus.connect(tls_url)


async def test_gateway_serves_https(tls_server: NatsServer, tls_files: TlsFiles) -> None:
    bus = await Bus.connect(_settings(tls_server, tls_files), name="test-gw-tls")
    try:
        await bus.ensure()
        gw = await start_gateway(
            bus,
            ca_file=tls_files.ca_cert,
            tls_cert_file=tls_files.server_cert,
            tls_key_file=tls_files.server_key,
        )
        try:
            assert str(gw.http.base_url).startswith("https://")
            assert (await gw.http.get("/healthz")).status_code == 200
            port = gw.http.base_url.port
            trust_ca = ssl.create_default_context(cafile=tls_files.ca_cert)
            async with httpx.AsyncClient(verify=trust_ca) as https:
                localhost = await https.get(f"https://localhost:{port}/healthz")
                assert localhost.status_code == 200
            async with httpx.AsyncClient() as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get(f"http://127.0.0.1:{port}/healthz")
            async with httpx.AsyncClient() as system_cas:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await system_cas.get(f"https://127.0.0.1:{port}/healthz")
        finally:
            await stop_gateway(gw)
    finally:
        await bus.close()
