"""The dashboard reads the gateway's own HTTP API, in-process.

Every page is rendered from the same JSON routes outside callers use, called through
``httpx.ASGITransport`` on the Litestar app itself (no socket) with the dashboard
user's token. So a page never shows more than that token's scopes allow (a 403
renders as "your token lacks ..."), the request guard, rate limit and error bodies
apply unchanged, and the dashboard depends only on the documented HTTP contract. A
route this gateway does not have yet renders as "not available".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import msgspec
from litestar import Litestar, Request

from agentbus_gateway.auth import SESSION_COOKIE

_PARAM = re.compile(r"\{[^}]*\}")
State = Literal["ok", "absent", "forbidden", "unauthorized", "missing", "error"]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One API answer as a page uses it.

    Attributes:
        status: the HTTP status (0: the route does not exist in this gateway).
        body: the decoded JSON body (None when there is none).
        message: the error message of a failed call, else "".
        path: the path that was called (shown with a failure).
    """

    status: int
    body: Any = None
    message: str = ""
    path: str = ""

    @property
    def state(self) -> State:
        """What the answer means for a page.

        ``ok``, ``absent`` (no such route here), ``forbidden`` (scope),
        ``unauthorized``, ``missing`` (404) or ``error``.
        """
        if self.status == 0:
            return "absent"
        if 200 <= self.status < 300:
            return "ok"
        named: dict[int, State] = {401: "unauthorized", 403: "forbidden", 404: "missing"}
        return named.get(self.status, "error")

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.state == "ok"


def route_exists(app: Litestar, template: str) -> bool:
    """Whether ``app`` serves a route of path ``template`` (``/v1/deployments/{}``)."""
    wanted = _PARAM.sub("{}", template)
    return any(_PARAM.sub("{}", route.path_format) == wanted for route in app.routes)


class Api:
    """Calls the gateway's JSON routes in-process as the requesting dashboard user."""

    def __init__(self, request: Request[Any, Any, Any], *, auth: bool) -> None:
        self.app: Litestar = request.app
        headers = {"accept": "application/json"}
        token = request.cookies.get(SESSION_COOKIE, "")
        if auth and token:
            headers["authorization"] = f"Bearer {token}"
        host = request.headers.get("host", "localhost")
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url=f"http://{host}",
            headers=headers,
            timeout=30.0,
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    def has(self, template: str) -> bool:
        """Whether this gateway serves ``template`` (see ``route_exists``)."""
        return route_exists(self.app, template)

    async def get(self, template: str, *args: str, **params: Any) -> Fetched:
        """``GET`` ``template`` with ``args`` filled in; ``params`` without Nones.

        Raises nothing: a failure is a ``Fetched`` whose ``state`` says what went wrong.
        """
        return await self.call("GET", template, *args, params=params)

    async def post(self, template: str, *args: str, body: Any = None, **params: Any) -> Fetched:
        """``POST`` ``template`` (JSON ``body`` if given); see ``get``."""
        return await self.call("POST", template, *args, params=params, body=body)

    async def call(
        self,
        method: str,
        template: str,
        *args: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Fetched:
        """One call of ``template``; a missing route answers ``status`` 0."""
        if not self.has(template):
            return Fetched(0, path=template)
        path = _PARAM.sub("{}", template).format(*(quote(a, safe="") for a in args))
        query = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        content = None if body is None else msgspec.json.encode(body)
        headers = {"content-type": "application/json"} if content is not None else {}
        response = await self._client.request(
            method, path, params=query, content=content, headers=headers
        )
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = None
        message = ""
        if response.status_code >= 400:
            detail = data.get("error", {}) if isinstance(data, dict) else {}
            message = str(detail.get("message") or response.reason_phrase)
        return Fetched(response.status_code, data, message, path)
