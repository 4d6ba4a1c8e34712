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
from agentbus_gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from agentbus_gateway.settings import GatewaySettings

SCOPE_OPT = "scope"
"""The handler ``opt`` key naming the scope a route needs."""
BEARER = "bearer"
"""Name of the OpenAPI security scheme (HTTP bearer)."""


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
            token = await self._authenticate(request.headers.get("authorization", ""))
            require_scope(token, scope)
            await self._rate_limit(token)
            request.state.token_id = token.token_id  # per-token caps (event streams)
            request.state.token_name = token.name  # who decided (approvals)
        except (AuthenticationError, PermissionDeniedError, RateLimitedError) as exc:
            self._refused(request, exc)
            raise

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
