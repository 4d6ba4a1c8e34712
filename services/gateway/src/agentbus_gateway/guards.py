"""Checks every request passes before its handler runs (a Litestar ``before_request``).

- ``Host`` must be one of ``GatewaySettings.allowed_hosts`` (port ignored; ``*`` any,
  ``*.example.com`` subdomains): 400 otherwise. Stops DNS-rebinding pages.
- A browser request from another site is refused with 403: an ``Origin`` that is not
  the gateway's own (same scheme-less host and port as ``Host``) nor listed in
  ``allowed_origins``, or ``Sec-Fetch-Site: cross-site|same-site`` without such an
  origin. Non-browser clients send neither header and pass.
- A request carrying a body (``Content-Length`` > 0, chunked, or a ``Content-Type``)
  must declare JSON (``application/json`` or ``application/*+json``): 415 otherwise.
  A ``text/plain`` or form POST is what a foreign page can send without a CORS
  preflight; JSON cannot be.

Litestar's ``AllowedHostsConfig`` answers with its own body and ``CORSConfig`` does not
refuse simple requests, so both checks live here, where refusals get the gateway's
error body, route label and log line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from litestar import Request

from agentbus_gateway.errors import RequestRefusedError
from agentbus_gateway.settings import GatewaySettings

Guard = Callable[[Request[Any, Any, Any]], Awaitable[None]]
_CROSS_SITE = frozenset({"cross-site", "same-site"})


def host_name(host: str) -> str:
    """``host`` without its port, lowercased (``[::1]:8080`` → ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` (a ``Host`` header value) matches an entry of ``allowed``."""
    name = host_name(host)
    for pattern in (p.strip().lower() for p in allowed):
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def is_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` value is JSON (``application/json``, ``…+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _has_body(request: Request[Any, Any, Any]) -> bool:
    headers = request.headers
    length = headers.get("content-length", "0").strip() or "0"
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    return chunked or "content-type" in headers or length != "0"


def request_guard(settings: GatewaySettings) -> Guard:
    """The ``before_request`` hook enforcing ``settings``' hosts and origins.

    Raises (from the hook):
        RequestRefusedError: 400 (Host), 403 (cross-site), 415 (body not JSON).
    """
    hosts = list(settings.allowed_hosts)
    origins = frozenset(o.strip().rstrip("/").lower() for o in settings.allowed_origins)

    async def guard(request: Request[Any, Any, Any]) -> None:
        headers = request.headers
        host = headers.get("host", "")
        if not host_allowed(host, hosts):
            shown = host if len(host) <= 100 else f"{host[:100]}..."
            raise RequestRefusedError(
                400, f"host {shown!r} is not served here (GATEWAY_ALLOWED_HOSTS)", "Host"
            )
        origin = headers.get("origin", "").strip().rstrip("/").lower()
        fetch_site = headers.get("sec-fetch-site", "").lower()
        same_origin = bool(origin) and urlsplit(origin).netloc == host.strip().lower()
        if origin and not same_origin and origin not in origins:
            raise RequestRefusedError(
                403,
                f"origin {origin[:100]!r} may not call the gateway (GATEWAY_ALLOWED_ORIGINS)",
                "Origin",
            )
        if fetch_site in _CROSS_SITE and not (same_origin or origin in origins):
            raise RequestRefusedError(
                403, f"{fetch_site} browser requests are refused", "Sec-Fetch-Site"
            )
        if _has_body(request) and not is_json(headers.get("content-type", "")):
            raise RequestRefusedError(
                415,
                "request bodies must be JSON (Content-Type: application/json)",
                "Content-Type",
            )

    return guard
