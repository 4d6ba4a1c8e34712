"""The web dashboard the gateway serves at ``/`` (docs/decisions/0010-dashboard.md).

Server-rendered HTML (Jinja templates) made live by htmx and its SSE extension, all
served by the gateway: the browser libraries come from npm at build time
(``scripts/web.sh`` copies them into ``static/vendor``), nothing from a CDN. Pages
read the gateway's own JSON API in-process as the logged-in user (``api``).
"""

from __future__ import annotations

from litestar import Router
from litestar.static_files import create_static_files_router
from loguru import logger

from agentbus_gateway.auth import COOKIE_OPT
from agentbus_gateway.dashboard.actions import ACTION_ROUTES
from agentbus_gateway.dashboard.pages import PAGE_ROUTES
from agentbus_gateway.dashboard.render import STATIC, missing_vendor_files, template_config
from agentbus_gateway.dashboard.session import (
    SESSION_ROUTES,
    LoginRequiredError,
    login_redirect,
    session_guard,
)
from agentbus_gateway.routes import GatewayContext

__all__ = ["dashboard_routers", "template_config"]


def dashboard_routers(ctx: GatewayContext) -> list[Router]:
    """The dashboard's pages, fragments, actions and login, plus ``/static``.

    Logs a warning when the browser libraries are missing (``scripts/web.sh`` not
    run): pages then render but do not update live.
    """
    if missing := missing_vendor_files():
        logger.warning("dashboard browser libraries missing; run scripts/web.sh", files=missing)
    pages = Router(
        path="/",
        route_handlers=[*SESSION_ROUTES, *PAGE_ROUTES, *ACTION_ROUTES],
        guards=[session_guard(ctx)],
        exception_handlers={LoginRequiredError: login_redirect},
        opt={COOKIE_OPT: True},
        include_in_schema=False,
    )
    static = create_static_files_router(path="/static", directories=[STATIC])
    return [pages, static]
