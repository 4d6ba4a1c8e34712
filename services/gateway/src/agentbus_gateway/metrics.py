"""Gateway metrics and the ASGI wrapper that records every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentbus.service import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED_ROUTE = "unmatched"
"""Route label of requests that matched no route (keeps the label set bounded)."""


class GatewayMetrics:
    """Every metric the gateway exports, on one ``CollectorRegistry``.

    Attributes:
        service: the shared service metrics (micro endpoints and bad input, labelled
            ``service="gateway"``); bad HTTP bodies count in its ``bad_messages``
            with ``source`` = the route template.
        http_requests: ``agentbus_gateway_http_requests_total{method,route,status}``.
        http_duration: ``agentbus_gateway_http_request_duration_seconds{method,route}``.
        auth_refusals: ``agentbus_gateway_auth_refusals_total{status,reason}``: 401
            (``missing``, ``malformed``, ``unknown``, ``revoked``, ``expired``), 403
            (``scope``), 429 (``rate``).
        sse_streams: ``agentbus_gateway_sse_streams``: event streams open now.
        sse_events: ``agentbus_gateway_sse_events_sent_total``: events handed to clients.
        sse_cutoffs: ``agentbus_gateway_sse_cutoffs_total{reason}``: streams the gateway
            ended: ``send_timeout`` (the client took no data for
            ``sse_send_timeout_s``), ``lagging`` (over ``sse_max_lag_events`` behind for
            ``sse_max_lag_s``), ``stopping`` (the gateway stops), ``duration``
            (open ``sse_max_duration_s``), ``unavailable`` (the
            events stream could not be read).
        sse_refusals: ``agentbus_gateway_sse_refusals_total{limit}``: streams refused
            over a cap, ``token`` (429) or ``gateway`` (503).
        audit_failures: ``agentbus_gateway_audit_failures_total{reason}``: audit trail
            queries answered 503: ``not_configured`` (no audit database),
            ``unreachable`` (no connection), ``query`` (the database failed it).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.service = ServiceMetrics("gateway", registry)
        self.http_requests = Counter(
            "agentbus_gateway_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "agentbus_gateway_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["method", "route"],
            registry=registry,
        )
        self.auth_refusals = Counter(
            "agentbus_gateway_auth_refusals_total",
            "Requests refused by token authentication, scope or rate limit.",
            ["status", "reason"],
            registry=registry,
        )
        self.sse_streams = Gauge(
            "agentbus_gateway_sse_streams", "Event streams open now.", registry=registry
        )
        self.sse_events = Counter(
            "agentbus_gateway_sse_events_sent_total",
            "Events handed to event stream clients.",
            registry=registry,
        )
        self.sse_cutoffs = Counter(
            "agentbus_gateway_sse_cutoffs_total",
            "Event streams the gateway ended, by reason.",
            ["reason"],
            registry=registry,
        )
        self.sse_refusals = Counter(
            "agentbus_gateway_sse_refusals_total",
            "Event streams refused over a cap, by the cap (token, gateway).",
            ["limit"],
            registry=registry,
        )
        self.audit_failures = Counter(
            "agentbus_gateway_audit_failures_total",
            "Audit trail queries that could not be answered, by reason.",
            ["reason"],
            registry=registry,
        )


class HttpMetricsMiddleware:
    """ASGI wrapper counting and timing each HTTP request of the wrapped app.

    The route label is the route template Litestar stores in ``scope["path_template"]``
    once it has routed the request (``/v1/tasks/{task_id}``), never the raw path, so
    the label set stays small; requests that matched no route are ``unmatched``.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app, recording the response status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            method = str(scope.get("method", ""))
            route = str(scope.get("path_template") or UNMATCHED_ROUTE)
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_duration.labels(method, route).observe(time.perf_counter() - started)
