"""Bearer-token authentication, scopes and the per-token rate limit of the gateway.

Each route declares the scope it needs in its handler's ``opt`` (``needs(scope)``);
a route without one is public (``/healthz``, the OpenAPI document). For any other,
the ``before_request`` hook (after the Host and origin checks) asks for
``Authorization: Bearer abt_<id>_<secret>`` (``agentbus.auth.tokens``) and answers:

- 401 ``unauthorized`` with ``WWW-Authenticate: Bearer`` when it is missing, malformed,
  unknown, revoked or expired;
- 403 ``forbidden`` when the token lacks the scope (``admin`` has every scope);
- 429 ``rate_limited`` with ``Retry-After`` (whole seconds) when the token made more
  than ``rate_limit_requests`` requests in the last ``rate_limit_window_s`` (a moving
  window from the ``limits`` library, in memory: per gateway instance).

Browsers cannot set headers on an ``EventSource``: the dashboard's login stores the
token in the HttpOnly cookie ``SESSION_COOKIE``, accepted (when the request has no
``Authorization`` header) on dashboard routes (``opt`` ``COOKIE_OPT``) and on
``GET`` event streams (``text/event-stream``). A cookie-authenticated request other
than ``GET``/``HEAD`` must also show it comes from the gateway's own pages: an
``Origin`` equal to its ``Host``, or ``Sec-Fetch-Site: same-origin`` (else 403).

Tokens are read from a ``KvMirror`` of ``<p>_tokens``: a KV watch that applies a
revoke as soon as it is stored, so a request costs no KV read. A token the mirror
does not hold (made since its replay) or any token while the watch is down is read
from the bucket. Each refusal is counted in
``agentbus_gateway_auth_refusals_total{status,reason}`` and logged with the token id
only; the secret is never logged.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from litestar import Request
from loguru import logger

from agentbus.auth.tokens import check_token, get_token, parse_token, require_scope
from agentbus.bus import Bus
from agentbus.errors import (
    AgentBusError,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitedError,
)
from agentbus.kv.mirror import KvMirror
from agentbus.messages import ApiToken, Scope, utcnow
from agentbus_gateway.errors import RequestRefusedError
from agentbus_gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from agentbus_gateway.settings import GatewaySettings

SCOPE_OPT = "scope"
"""The handler ``opt`` key naming the scope a route needs."""
BEARER = "bearer"
"""Name of the OpenAPI security scheme (HTTP bearer)."""
COOKIE_OPT = "session_cookie"
"""The handler ``opt`` key of routes that accept the session cookie (the dashboard)."""
SESSION_COOKIE = "agentbus_session"
"""Name of the HttpOnly cookie holding a dashboard user's token."""
EVENT_STREAM = "text/event-stream"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def cookie_accepted(request: Request[Any, Any, Any]) -> bool:
    """Whether ``request``'s route takes the session cookie in place of a header.

    Dashboard routes (``opt[COOKIE_OPT]``) do; so do ``GET`` event streams, since a
    browser's ``EventSource`` cannot send an ``Authorization`` header.
    """
    handler = request.route_handler
    if handler.opt.get(COOKIE_OPT):
        return True
    media = str(getattr(handler, "media_type", "") or "")
    return request.method in _SAFE_METHODS and media.startswith(EVENT_STREAM)


def require_same_origin(request: Request[Any, Any, Any]) -> None:
    """Refuse a cookie-authenticated state change that does not come from our pages.

    Raises:
        RequestRefusedError: neither ``Origin`` equal to the gateway's own origin nor
            ``Sec-Fetch-Site: same-origin`` (403).
    """
    if request.method in _SAFE_METHODS:
        return
    headers = request.headers
    origin = headers.get("origin", "").strip().rstrip("/").lower()
    host = headers.get("host", "").strip().lower()
    if origin and origin.split("://", 1)[-1] == host:
        return
    if headers.get("sec-fetch-site", "").lower() == "same-origin":
        return
    raise RequestRefusedError(
        403, "a request authenticated by the session cookie must come from the dashboard", "Origin"
    )


def needs(scope: Scope) -> dict[str, Any]:
    """Route decorator arguments: the route needs ``scope`` (and says so in OpenAPI)."""
    return {"opt": {SCOPE_OPT: scope}, "security": [{BEARER: []}]}


class Authenticator:
    """Checks each request's token against a watched copy of ``<p>_tokens``.

    Attributes:
        mirror: the watched tokens; run it with ``run``.
    """

    def __init__(self, bus: Bus, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.mirror = KvMirror(
            bus,
            bus.names.tokens_bucket,
            ApiToken,
            service_metrics=metrics.service,
            source=bus.names.tokens_bucket,
        )
        self._limit = RateLimitItemPerSecond(
            max(settings.rate_limit_requests, 1), settings.rate_limit_window_s
        )
        self._limiter: MovingWindowRateLimiter | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the token mirror current until ``stop`` is set."""
        if self.settings.auth_required:
            await self.mirror.run(stop)

    async def _token(self, token_id: str) -> ApiToken | None:
        if self.mirror.live and (token := self.mirror.values.get(token_id)) is not None:
            return token
        kv = await self.bus.kv(self.bus.names.tokens_bucket)
        try:
            return await get_token(kv, token_id)
        except AgentBusError:  # a bad entry: the mirror reports it
            return None

    async def authorize(self, request: Request[Any, Any, Any]) -> None:
        """Let ``request`` through, or raise what it is refused with.

        Raises:
            AuthenticationError: no valid token (401).
            PermissionDeniedError: the token lacks the route's scope (403).
            RateLimitedError: the token's requests are over the limit (429).
            UnavailableError: the tokens bucket cannot be read (503).
        """
        scope: Scope | None = request.route_handler.opt.get(SCOPE_OPT)
        if scope is None or not self.settings.auth_required:
            return
        try:
            header = request.headers.get("authorization", "")
            cookie = request.cookies.get(SESSION_COOKIE, "")
            if not header.strip() and cookie and cookie_accepted(request):
                require_same_origin(request)
                header = f"Bearer {cookie}"
            token = await self._authenticate(header)
            require_scope(token, scope)
            await self._rate_limit(token)
            request.state.token_id = token.token_id  # per-token caps (event streams)
            request.state.token_name = token.name  # who decided (approvals)
        except (AuthenticationError, PermissionDeniedError, RateLimitedError) as exc:
            self._refused(request, exc)
            raise

    async def check(self, secret: str) -> ApiToken:
        """The valid token whose full text is ``secret`` (``abt_<id>_<secret>``).

        Raises:
            AuthenticationError: malformed, unknown, revoked or expired.
            UnavailableError: the tokens bucket cannot be read.
        """
        token_id, key = parse_token(secret.strip())
        return check_token(await self._token(token_id), token_id, key, now=utcnow())

    async def _authenticate(self, header: str) -> ApiToken:
        kind, _, credentials = header.strip().partition(" ")
        if not header.strip():
            raise AuthenticationError("missing", "send Authorization: Bearer <token>")
        if kind.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError("malformed", "the Authorization header is not Bearer")
        token_id, secret = parse_token(credentials.strip())
        return check_token(await self._token(token_id), token_id, secret, now=utcnow())

    async def _rate_limit(self, token: ApiToken) -> None:
        if self.settings.rate_limit_requests == 0:
            return
        if self._limiter is None:  # its storage needs the running loop
            self._limiter = MovingWindowRateLimiter(MemoryStorage())
        if await self._limiter.hit(self._limit, token.token_id):
            return
        stats = await self._limiter.get_window_stats(self._limit, token.token_id)
        retry_after_s = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(
            retry_after_s,
            f"token {token.token_id} made over {self.settings.rate_limit_requests} requests "
            f"in {self.settings.rate_limit_window_s} s; retry after {retry_after_s} s",
        )

    def _refused(self, request: Request[Any, Any, Any], exc: AgentBusError) -> None:
        """Count and log a refusal (the exception handler answers it)."""
        if isinstance(exc, AuthenticationError):
            status, reason = 401, exc.reason
        elif isinstance(exc, PermissionDeniedError):
            status, reason = 403, "scope"
        else:
            status, reason = 429, "rate"
        self.metrics.auth_refusals.labels(str(status), reason).inc()
        logger.warning(
            "request refused",
            method=request.method,
            route=str(request.scope.get("path_template") or UNMATCHED_ROUTE),
            status=status,
            reason=str(exc),
        )
