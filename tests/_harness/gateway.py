"""The gateway in-process for the tests: started on a free port, an HTTP client to it.

The client carries a bearer token made with ``create_token`` (every scope unless the
test asks for fewer); ``Gateway.client`` gives another client with another token.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from agentbus.audit import AuditSettings
from agentbus.auth.tokens import SCOPES, create_token
from agentbus.bus import Bus
from agentbus.embedded import free_port
from agentbus.messages import ApiToken
from agentbus_gateway.service import serve
from agentbus_gateway.settings import GatewaySettings


@dataclass
class Gateway:
    http: httpx.AsyncClient
    """A client carrying ``token``."""
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]
    token: ApiToken
    secret: str
    """The full text of ``token`` (``abt_<id>_<secret>``)."""

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def client(self, secret: str | None = None) -> httpx.AsyncClient:
        """A client to this gateway sending ``secret`` as its token (None: no header)."""
        headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
        return httpx.AsyncClient(base_url=self.http.base_url, timeout=30.0, headers=headers)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def start_gateway(
    bus: Bus,
    *,
    scopes: Iterable[str] = SCOPES,
    ca_file: Path | None = None,
    token_bus: Bus | None = None,
    audit: AuditSettings | None = None,
    **settings: object,
) -> Gateway:
    """The gateway on a free port, its client holding a token with ``scopes``; with
    ``tls_cert_file`` in ``settings`` it serves HTTPS and ``http`` trusts ``ca_file``.
    ``token_bus`` writes the token (default ``bus``: a gateway identity may not).
    ``audit``: its audit database (default: none, whatever the environment says)."""
    token, secret = await create_token(token_bus or bus, "test", scopes)
    stop = asyncio.Event()
    registry = CollectorRegistry()
    port = free_port()
    gw_settings = GatewaySettings(port=port, shutdown_grace_s=2.0, **settings)  # type: ignore[arg-type]
    audit = audit if audit is not None else AuditSettings(database_url=None)
    task = asyncio.create_task(serve(bus, stop, gw_settings, registry, audit=audit))
    scheme = "https" if settings.get("tls_cert_file") else "http"
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    http = httpx.AsyncClient(
        base_url=f"{scheme}://127.0.0.1:{port}", timeout=30.0, verify=verify, headers=bearer(secret)
    )
    for _ in range(200):
        if task.done():
            task.result()
        try:
            await http.get("/healthz")
            break
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    return Gateway(http=http, registry=registry, stop=stop, task=task, token=token, secret=secret)


async def stop_gateway(gw: Gateway) -> None:
    gw.stop.set()
    await asyncio.wait_for(gw.task, 15)
    await gw.http.aclose()
