"""Which runtime an embedded stack uses: Docker when it can, else local processes.

The Docker check speaks the Engine API directly (``GET /_ping`` and
``GET /images/<image>/json`` over the unix socket, or TCP for ``DOCKER_HOST=tcp://``),
so the library needs no Docker client package.
"""

from __future__ import annotations

import asyncio
import os
from typing import Literal
from urllib.parse import urlsplit

from agentbus.errors import UnavailableError

RuntimeChoice = Literal["auto", "docker", "process"]
DEFAULT_SOCKET = "/var/run/docker.sock"


async def _engine_get(path: str, timeout_s: float) -> int:
    """HTTP status of ``GET path`` on the Docker Engine API (raises OSError/TimeoutError)."""
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    url = urlsplit(host)
    if url.scheme == "unix":
        opening = asyncio.open_unix_connection(url.path or DEFAULT_SOCKET)
    elif url.scheme == "tcp":
        opening = asyncio.open_connection(url.hostname, url.port or 2375)
    else:
        raise OSError(f"unsupported DOCKER_HOST {host!r}")
    async with asyncio.timeout(timeout_s):
        reader, writer = await opening
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP reply: {status_line[:80]!r}")
    return int(parts[1])


async def docker_status(image: str, *, timeout_s: float = 2.0) -> tuple[bool, bool, str]:
    """``(engine answers, image exists, why)`` for the local Docker engine."""
    try:
        if await _engine_get("/_ping", timeout_s) != 200:
            return False, False, "the Docker engine does not answer /_ping"
        status = await _engine_get(f"/images/{image}/json", timeout_s)
    except (OSError, TimeoutError) as exc:
        return False, False, f"no Docker engine reachable ({type(exc).__name__}: {exc})"
    if status == 200:
        return True, True, f"a Docker engine answers and image {image} exists"
    return True, False, f"a Docker engine answers but image {image} is missing"


async def choose_runtime(requested: RuntimeChoice, image: str) -> tuple[str, str]:
    """Pick the runtime of an embedded stack: ``(runtime, why)``.

    ``auto`` is docker when an engine answers and ``image`` exists, else process.

    Raises:
        UnavailableError: ``docker`` was requested but the engine or image is missing.
    """
    if requested == "process":
        return "process", "requested with --runtime process"
    engine, has_image, why = await docker_status(image)
    if requested == "docker":
        if not (engine and has_image):
            raise UnavailableError(f"--runtime docker, but {why}")
        return "docker", f"requested with --runtime docker; {why}"
    if engine and has_image:
        return "docker", why
    return "process", f"{why}; agents run as local processes"
