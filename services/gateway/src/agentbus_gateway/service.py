"""The gateway process body: a uvicorn server for the HTTP app plus a micro service.

The HTTP app (``agentbus_gateway.app``) talks to the bus only through
``agentbus.client.Client`` and typed requests; the ``nats.micro`` service named
``gateway`` answers ``$SRV.PING|INFO|STATS`` and ``<p>.gateway.health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.audit import AuditSettings
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import ContractError, UnavailableError
from agentbus.messages import GetHealth, HealthReply
from agentbus.service import MicroService
from agentbus_gateway.app import create_app
from agentbus_gateway.auth import Authenticator
from agentbus_gateway.metrics import GatewayMetrics
from agentbus_gateway.routes import GatewayContext
from agentbus_gateway.settings import GatewaySettings
from agentbus_gateway.sse import StreamSlots


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process.

    ``agentbus.service.run_service`` turns SIGTERM/SIGINT into the ``stop`` event;
    uvicorn's own handlers would otherwise replace those while it serves.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers."""
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (port 0: any free port).

    Binding before uvicorn starts turns "address in use" into an exception here,
    where uvicorn would call ``sys.exit``.

    Raises:
        UnavailableError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UnavailableError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


async def serve(
    bus: Bus,
    stop: asyncio.Event,
    settings: GatewaySettings,
    registry: CollectorRegistry,
    *,
    audit: AuditSettings | None = None,
) -> None:
    """Serve HTTP on ``settings.host:settings.port`` until ``stop`` is set.

    With ``settings.tls_cert_file`` (and ``tls_key_file``) it serves HTTPS instead.

    Tokens are checked against a watched copy of ``<p>_tokens`` (``auth.Authenticator``).
    On stop, long-polling ``GET /v1/tasks/{id}?wait_s=`` requests return the current
    record, other requests get ``settings.shutdown_grace_s`` seconds to finish, then
    the micro service is removed. The caller closes ``bus``. ``audit`` is the audit
    database ``GET /v1/audit/events`` reads (default: ``AuditSettings()`` from the
    environment, ``AGENTBUS_AUDIT_DATABASE_URL``).

    Raises:
        UnavailableError: the HTTP address cannot be bound.
        ContractError: the TLS files are missing or unusable.
    """
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ContractError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together")
    metrics = GatewayMetrics(registry)
    auth = Authenticator(bus, settings, metrics)
    streams = StreamSlots(
        per_token=settings.sse_max_streams_per_token,
        total=settings.sse_max_streams,
        metrics=metrics,
    )
    audit = audit if audit is not None else AuditSettings()
    ctx = GatewayContext(bus, Client(bus), settings, metrics, stop, auth, streams, audit)
    sock = bind_socket(settings.host, settings.port)
    port = int(sock.getsockname()[1])
    micro = MicroService(bus, "gateway", metrics.service, description="agentbus HTTP gateway")

    async def _health(_: GetHealth) -> HealthReply:
        nats_state = "connected" if bus.nc.is_connected else "disconnected"
        return HealthReply(
            service="gateway", details={"nats": nats_state, "http": f"{settings.host}:{port}"}
        )

    config = uvicorn.Config(
        create_app(ctx),
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    try:
        config.load()  # here, not in the server task: unusable TLS files fail the start
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise ContractError(f"gateway TLS files unusable: {exc}") from exc
    server = _Server(config)
    tokens = asyncio.create_task(auth.run(stop), name="gateway-tokens")
    if not settings.auth_required:
        logger.warning("gateway authentication is off (GATEWAY_AUTH_REQUIRED=false)")
    try:
        await micro.start()
        await micro.endpoint("health", GetHealth, _health)
        http = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        stopping = asyncio.create_task(stop.wait(), name="gateway-stop")
        scheme = "https" if settings.tls_cert_file else "http"
        logger.info("gateway listening", host=settings.host, port=port, scheme=scheme)
        done, _ = await asyncio.wait({http, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if http in done:
            http.result()  # re-raises what ended the server
            raise UnavailableError("the gateway's HTTP server ended before stop was set")
        server.should_exit = True
        await http
    finally:
        server.should_exit = True
        tokens.cancel()
        await asyncio.gather(tokens, return_exceptions=True)
        await micro.stop()
        sock.close()
        logger.info("gateway stopped")
