"""How ``agentbus`` commands find and reach a stack.

Precedence of the NATS URL and prefix: the command's options, then the environment
(``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX``; typer reads both into the options), then
the state file of a running embedded stack, then the defaults of ``BusSettings``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import read_state
from agentbus.errors import UnavailableError
from agentbus.settings import BusSettings


def resolve_settings(nats_url: str | None = None, prefix: str | None = None) -> BusSettings:
    """Bus settings from explicit values, else the embedded state file, else defaults.

    The state file is used only when ``nats_url`` is not given, so a URL from the
    command line or the environment is never paired with another stack's prefix.
    """
    if nats_url is None and (state := read_state()) is not None:
        nats_url, prefix = state.nats_url, prefix or state.prefix
    values = {k: v for k, v in (("nats_url", nats_url), ("prefix", prefix)) if v}
    return BusSettings(**values)  # type: ignore[arg-type]


async def _tcp_reachable(nats_url: str, timeout_s: float) -> bool:
    for server in nats_url.split(","):
        parts = urlsplit(server.strip() if "://" in server else f"nats://{server.strip()}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222),
                timeout_s,
            )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False


async def connect_client(settings: BusSettings, *, timeout_s: float = 5.0) -> Client:
    """A ``Client`` on ``settings``, failing fast when no server listens.

    ``Bus.connect`` retries the first connect forever; this checks that some server
    accepts TCP connections first and bounds the whole connect by ``timeout_s``.

    Raises:
        UnavailableError: no NATS server reachable at ``settings.nats_url``.
    """
    unavailable = UnavailableError(f"no NATS server reachable at {settings.nats_url}")
    if not await _tcp_reachable(settings.nats_url, min(timeout_s, 2.0)):
        raise unavailable
    try:
        bus = await asyncio.wait_for(Bus.connect(settings, name="agentbus-cli"), timeout_s)
    except TimeoutError as exc:
        raise unavailable from exc
    return Client(bus)
