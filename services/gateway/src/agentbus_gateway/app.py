"""The Litestar application of the gateway, wrapped in the HTTP metrics middleware."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from agentbus import __version__
from agentbus_gateway.approvals import APPROVAL_ROUTES
from agentbus_gateway.audit_routes import AUDIT_ROUTES
from agentbus_gateway.auth import BEARER
from agentbus_gateway.dashboard import dashboard_routers, template_config
from agentbus_gateway.errors import exception_handlers
from agentbus_gateway.event_stream import EVENT_ROUTES
from agentbus_gateway.events import publish_topic_event
from agentbus_gateway.fleet_routes import FLEET_ROUTES
from agentbus_gateway.guards import request_guard
from agentbus_gateway.logs_stream import LOG_ROUTES
from agentbus_gateway.metrics import HttpMetricsMiddleware
from agentbus_gateway.openapi import refine_openapi
from agentbus_gateway.output import task_output
from agentbus_gateway.request import GatewayRequest
from agentbus_gateway.routes import ROUTES, GatewayContext
from agentbus_gateway.state_routes import STATE_ROUTES
from agentbus_gateway.task_tree import TASK_TREE_ROUTES

ROUTE_HANDLERS = [
    *ROUTES,
    task_output,
    publish_topic_event,
    *EVENT_ROUTES,
    *TASK_TREE_ROUTES,
    *FLEET_ROUTES,
    *STATE_ROUTES,
    *LOG_ROUTES,
    *APPROVAL_ROUTES,
    *AUDIT_ROUTES,
]
"""Every route the gateway serves."""


def create_app(ctx: GatewayContext) -> HttpMetricsMiddleware:
    """The gateway's ASGI application for ``ctx`` (serve it with uvicorn).

    Routes: ``POST /v1/tasks``, ``GET /v1/tasks/{task_id}?wait_s=``,
    ``GET /v1/tasks/{task_id}/output``, ``GET /v1/tasks?status=dead``,
    ``POST /v1/tasks/{task_id}/cancel|resubmit``, ``POST /v1/tasks/wait``,
    ``POST /v1/events/{topic}?key=``, ``GET /v1/events`` and
    ``GET /v1/tasks/{task_id}/events`` (Server-Sent Events), ``GET /v1/tasks/{task_id}/subtasks``,
    ``GET /v1/agents?capability=``, ``GET /v1/nodes``, ``GET /v1/approvals``,
    ``GET /v1/approvals/{approval_id}``, ``POST /v1/approvals/{approval_id}/decision``,
    the fleet views
    (``fleet_routes``: overview, deployments, scale), checkpoints and traces
    (``state_routes``), ``GET /v1/logs/{agent_id}`` (``logs_stream``),
    ``GET /v1/approvals``, ``GET /v1/approvals/{approval_id}``,
    ``POST /v1/approvals/{approval_id}/decision``, ``GET /v1/audit/events``
    (``audit_routes``: the audit trail in PostgreSQL), ``GET /healthz``,
    ``GET /metrics``, ``GET /openapi.json`` (and ``/schema/openapi.json``), and the web
    dashboard at ``/`` (``agentbus_gateway.dashboard``: pages, ``/ui/...`` fragments and
    actions, ``/login``, ``/static``). Every request first passes ``guards.request_guard``
    (Host, origin, JSON bodies), then, on a route that names a scope, the token
    check of ``ctx.auth`` (401, 403, 429); bodies over ``settings.max_body_bytes``
    get 413.
    """
    guard = request_guard(ctx.settings)

    async def _before(request: Request[Any, Any, Any]) -> None:
        await guard(request)
        await ctx.auth.authorize(request)

    def _ctx() -> GatewayContext:
        return ctx

    app = Litestar(
        route_handlers=[*ROUTE_HANDLERS, *dashboard_routers(ctx)],
        template_config=template_config(),
        request_class=GatewayRequest,
        request_max_body_size=ctx.settings.max_body_bytes,
        before_request=_before,
        dependencies={"ctx": Provide(_ctx, sync_to_thread=False)},
        exception_handlers=exception_handlers(ctx.bus, ctx.metrics),  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="agentbus gateway",
            version=__version__,
            description=(
                "HTTP access to agentbus: submit and follow tasks, publish and follow "
                "events, list agents and nodes, watch and scale the fleet, browse "
                "checkpoints and traces, follow replica logs, query the audit trail."
            ),
            render_plugins=[JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An agentbus token, abt_<id>_<secret> (agentbus tokens "
                        "create); each operation's scope is in docs/protocol.md.",
                    )
                }
            ),
        ),
        logging_config=None,
    )
    refine_openapi(app)
    return HttpMetricsMiddleware(app, ctx.metrics)  # type: ignore[arg-type]
