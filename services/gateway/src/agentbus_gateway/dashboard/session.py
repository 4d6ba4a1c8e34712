"""Dashboard sessions: the login page, the session cookie, logout, the page guard.

A browser cannot put a bearer token on an ``EventSource``, so the login page takes a
token (``agentbus tokens create``), checks it and stores it in the ``SESSION_COOKIE``:
HttpOnly (page scripts cannot read it), ``SameSite=Strict`` (no other site's request
carries it), ``Secure`` when the gateway serves HTTPS, no expiry (gone with the
browser session; the token's own expiry and revocation still apply on every
request). With ``GATEWAY_AUTH_REQUIRED=false`` there is no login: every page opens.

``session_guard`` runs before every dashboard route: without a valid cookie a page
redirects to ``/login`` (an htmx request gets ``HX-Redirect``), and a state change
(``POST``) must come from the dashboard itself (``auth.require_same_origin``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect, Template
from loguru import logger

from agentbus.errors import AgentBusError, AuthenticationError
from agentbus_gateway.auth import SESSION_COOKIE, require_same_origin
from agentbus_gateway.routes import Ctx, GatewayContext

PUBLIC_OPT = "dashboard_public"
"""Handler ``opt`` key of dashboard routes open without a session (the login page)."""


class LoginRequiredError(Exception):
    """The dashboard request has no valid session: answered with a redirect to login."""


class LoginForm(msgspec.Struct, kw_only=True):
    """Body of ``POST /login`` (htmx ``json-enc``): the token's full text."""

    token: str = ""


def is_htmx(request: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the request was made by htmx (it sends ``HX-Request: true``)."""
    return request.headers.get("hx-request", "") == "true"


def session_guard(ctx: GatewayContext) -> Any:
    """The Litestar guard of the dashboard routes (module doc).

    Raises (from the guard):
        LoginRequiredError: auth is on and the cookie is missing or not a valid token.
        RequestRefusedError: a cookie-carrying state change from elsewhere (403).
    """

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        request: Request[Any, Any, Any] = connection  # type: ignore[assignment]
        require_same_origin(request)
        if not ctx.settings.auth_required or handler.opt.get(PUBLIC_OPT):
            return
        secret = connection.cookies.get(SESSION_COOKIE, "")
        if not secret:
            raise LoginRequiredError
        try:
            token = await ctx.auth.check(secret)
        except AuthenticationError as exc:
            logger.info("dashboard session refused", reason=exc.reason)
            raise LoginRequiredError from None
        connection.state.token_id = token.token_id

    return guard


def login_redirect(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    """The answer to ``LoginRequiredError``: to ``/login`` (htmx: ``HX-Redirect``)."""
    if is_htmx(request):
        return Response(None, status_code=200, headers={"HX-Redirect": "/login"})
    return Redirect("/login", status_code=303)


def _cookie(ctx: GatewayContext, request: Request[Any, Any, Any], value: str) -> Cookie:
    secure = ctx.settings.tls_cert_file is not None or request.url.scheme == "https"
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=None if value else 0,
    )


@get("/login", opt={PUBLIC_OPT: True}, include_in_schema=False)
async def login_page(ctx: Ctx) -> Template | Redirect:
    """The login form (with authentication off: straight to the overview)."""
    if not ctx.settings.auth_required:
        return Redirect("/", status_code=303)
    return Template(template_name="login.html", context={"auth": True, "page": "login"})


@post("/login", opt={PUBLIC_OPT: True}, include_in_schema=False, status_code=200)
async def login(request: Request[Any, Any, Any], ctx: Ctx) -> Response[Any] | Template:
    """Check the posted token; set the session cookie and go to the overview.

    A bad token re-renders the form with the reason (and counts as an auth refusal).
    """
    try:
        form = msgspec.json.decode(await request.body(), type=LoginForm)
        token = await ctx.auth.check(form.token)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _login_error('send the token as JSON: {"token": "abt_..."}')
    except AgentBusError as exc:
        reason = exc.reason if isinstance(exc, AuthenticationError) else exc.code
        ctx.metrics.auth_refusals.labels("401", f"login_{reason}").inc()
        logger.warning("dashboard login refused", reason=str(exc))
        return _login_error(str(exc))
    logger.info("dashboard login", token_id=token.token_id, token_name=token.name)
    return Response(
        None,
        status_code=200,
        headers={"HX-Redirect": "/"},
        cookies=[_cookie(ctx, request, form.token.strip())],
    )


def _login_error(message: str) -> Template:
    return Template(template_name="login_error.html", context={"message": message})


@post("/logout", include_in_schema=False, status_code=200)
async def logout(request: Request[Any, Any, Any], ctx: Ctx) -> Response[Any]:
    """Clear the session cookie and go to the login page."""
    return Response(
        None,
        status_code=200,
        headers={"HX-Redirect": "/login"},
        cookies=[_cookie(ctx, request, "")],
    )


SESSION_ROUTES = [login_page, login, logout]
