"""Exception handlers: every error becomes ``{"error": {"code", "message", "field"}}``.

- Litestar's validation errors (a path, query, header or body value that does not
  fit its model), malformed JSON and JSON nested too deep → 400 ``bad_request``
  naming the field; logged, counted in
  ``agentbus_bad_messages_total{service="gateway",source=<route>}`` and published as
  an ``ErrorEvent`` (best effort, in the background).
- Refusals before the handler (``RequestRefusedError``: Host 400, cross-site 403,
  body over the limit 413, not JSON 415) → their status; logged with the reason.
  Every response is counted in ``agentbus_gateway_http_requests_total{status}``.
- 405 keeps its ``Allow`` header.
- Token refusals (``agentbus_gateway.auth``, logged and counted there): 401
  ``unauthorized`` with ``WWW-Authenticate: Bearer``, 403 ``forbidden`` with
  ``WWW-Authenticate: Bearer error="insufficient_scope"``, 429 ``rate_limited`` with
  ``Retry-After``.
- agentbus errors → their code's status (ContractError 400, NotFoundError 404,
  ConflictError 409, UnavailableError 503, RequestTimeoutError 504).
- Anything else → 500 ``internal``, logged with its traceback.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import (
    AgentBusError,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitedError,
)
from agentbus.messages import ErrorEvent, utcnow
from agentbus_gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from agentbus_gateway.models import ErrorBody, ErrorDetail

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
    504: "timeout",
    500: "internal",
}
_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`")
_STATUSES = frozenset(_CODES)
NESTED_TOO_DEEP = "JSON nested too deep (keep values under about 900 levels)"

Handler = Callable[[Request[Any, Any, Any], Exception], Response[ErrorBody]]
REALM = 'Bearer realm="agentbus"'
"""The ``WWW-Authenticate`` challenge of a 401 (RFC 6750)."""


def auth_refusal(exc: AgentBusError) -> Response[ErrorBody] | None:
    """The response to a token refusal (401, 403 for a scope, 429), else None."""
    if isinstance(exc, AuthenticationError):
        challenge = REALM if exc.reason == "missing" else f'{REALM}, error="invalid_token"'
        return error_response(401, str(exc), "Authorization", {"WWW-Authenticate": challenge})
    if isinstance(exc, PermissionDeniedError):
        challenge = f'{REALM}, error="insufficient_scope", scope="{exc.scope}"'
        return error_response(403, str(exc), "Authorization", {"WWW-Authenticate": challenge})
    if isinstance(exc, RateLimitedError):
        return error_response(429, str(exc), None, {"Retry-After": str(exc.retry_after_s)})
    return None


class RequestRefusedError(HTTPException):
    """A request the gateway refuses before its handler runs.

    Attributes:
        status_code: the HTTP status (400, 403, 413, 415).
        detail: the reason, shown as the error message.
        field: the offending header or part (``Host``, ``Origin``, ``Content-Type``).
    """

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail=detail, status_code=status_code)
        self.field = field


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    """The JSON error response for ``status`` (with extra ``headers``, e.g. ``Allow``)."""
    code = _CODES.get(status, f"http_{status}")
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _route(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("path_template") or UNMATCHED_ROUTE)


def _bad_field(exc: ValidationException) -> tuple[str | None, str]:
    """The offending field and message of a Litestar validation error."""
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        message = str(first.get("message", exc.detail))
        key = first.get("key")
        if first.get("source") == "header" and isinstance(key, str):  # as it is sent
            key = key.replace("_", "-").title()
        if key in (None, "data"):  # whole body: the field is named in the message
            match = _FIELD_IN_MESSAGE.search(message)
            key = match.group(1) if match else "body"
        return str(key), f"{key}: {message}"
    return None, str(exc.detail)


def exception_handlers(bus: Bus, metrics: GatewayMetrics) -> dict[type[Exception], Handler]:
    """Litestar ``exception_handlers`` for the gateway app (by exception class)."""
    background: set[asyncio.Task[None]] = set()

    def _report_bad_input(request: Request[Any, Any, Any], reason: str) -> None:
        route = _route(request)
        metrics.service.bad_messages.labels("gateway", route).inc()
        logger.warning("bad request", method=request.method, route=route, reason=reason)
        subject = f"{request.method} {route}"
        event = ErrorEvent(service="gateway", subject=subject, reason=reason, at=utcnow())

        async def _publish() -> None:
            try:
                await bus.publish_event("error", "gateway", event)
            except Exception as exc:
                logger.warning("could not publish error event", error=repr(exc))

        task = asyncio.get_running_loop().create_task(_publish())
        background.add(task)
        task.add_done_callback(background.discard)

    def _on_validation(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
        assert isinstance(exc, ValidationException)
        field, message = _bad_field(exc)
        _report_bad_input(request, message)
        return error_response(400, message, field)

    def _on_http(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
        assert isinstance(exc, HTTPException)
        field = exc.field if isinstance(exc, RequestRefusedError) else None
        if exc.status_code == 400:  # malformed JSON, a refused Host and the like
            field = field or "body"
            message = f"{field}: {exc.detail}"
            _report_bad_input(request, message)
            return error_response(400, message, field)
        if exc.status_code == 413:
            limit = request.route_handler.resolve_request_max_body_size()
            exc.detail = f"request body over the limit of {limit} bytes"
            field = "body"
        if 400 <= exc.status_code < 500:
            logger.warning(
                "request refused",
                method=request.method,
                route=_route(request),
                status=exc.status_code,
                reason=exc.detail,
            )
        headers = dict(exc.headers or {})
        return error_response(exc.status_code, str(exc.detail), field, headers or None)

    def _on_agentbus(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
        assert isinstance(exc, AgentBusError)
        if (refused := auth_refusal(exc)) is not None:
            return refused  # logged and counted by agentbus_gateway.auth
        status = int(exc.code) if exc.code.isdigit() and int(exc.code) in _STATUSES else 500
        if status == 400:
            _report_bad_input(request, str(exc))
        else:
            logger.info("request refused", route=_route(request), code=exc.code, error=str(exc))
        return error_response(status, str(exc))

    def _on_other(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
        if isinstance(exc, RecursionError):  # a body decoded, then too deep to convert
            message = f"body: {NESTED_TOO_DEEP}"
            _report_bad_input(request, message)
            return error_response(400, message, "body")
        logger.opt(exception=exc).error("request failed", route=_route(request))
        return error_response(500, f"{type(exc).__name__}: {exc}")

    return {
        ValidationException: _on_validation,
        HTTPException: _on_http,
        AgentBusError: _on_agentbus,
        Exception: _on_other,
    }
