"""How a process reaches nats-server: the reachability pre-check of ``Bus.connect``."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


async def any_server_listens(nats_url: str, timeout_s: float) -> bool:
    """Whether some server of ``nats_url`` accepts TCP connections.

    A refused URL then fails at once instead of running nats-py's retry loop until the
    connect timeout.
    """
    for server in nats_url.split(","):
        server = server.strip()
        parts = urlsplit(server if "://" in server else f"nats://{server}")
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
