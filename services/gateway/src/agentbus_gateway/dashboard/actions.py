"""Dashboard actions (``POST``, sent by htmx as JSON): each calls the public API route.

The API's answer decides what the browser sees: on success the changed fragment (or
``HX-Redirect`` to the page of what was made: a resubmitted task, a forked thread);
on failure the API's error message in the page's flash area (``HX-Retarget``), so a
token without ``tasks:cancel`` or ``fleet:admin`` sees exactly why nothing happened.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, post
from litestar.response import Template

from agentbus_gateway.dashboard import views
from agentbus_gateway.dashboard.api import Fetched
from agentbus_gateway.dashboard.pages import Name, api, render
from agentbus_gateway.models import TaskIdPath
from agentbus_gateway.routes import Ctx, GatewayContext


class ScaleForm(msgspec.Struct, kw_only=True):
    """The scale form: a replica count (form fields arrive as text)."""

    replicas: str


class ForkForm(msgspec.Struct, kw_only=True):
    """The fork form: a version number, the new thread's id, the thread's namespace."""

    version: str
    new_thread: str
    namespace: str = ""


class DecisionForm(msgspec.Struct, kw_only=True):
    """An approval decision: the chosen option and a comment."""

    option: str
    comment: str = ""


def flash(ctx: GatewayContext, got: Fetched, what: str) -> Template:
    """The failure of ``what`` shown in the page's ``#flash`` area."""
    message = got.message or f"HTTP {got.status}"
    if got.state == "absent":
        message = f"this gateway does not serve {got.path}"
    template = render(ctx, "_flash.html", "", what=what, message=message, status=got.status)
    template.headers.update({"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
    return template


async def _form(request: Request[Any, Any, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body(), type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


@post("/ui/tasks/{task_id:str}/cancel", status_code=200)
async def cancel(request: Request[Any, Any, Any], ctx: Ctx, task_id: TaskIdPath) -> Template:
    """Cancel the task (and its subtasks); re-render its record."""
    async with api(request, ctx) as a:
        got = await a.post("/v1/tasks/{task_id}/cancel", task_id, reason="dashboard")
        if not got.ok:
            return flash(ctx, got, f"cancel {task_id}")
        detail = await views.task_detail(a, task_id)
    return render(ctx, "_task.html", "tasks", task_id=task_id, **detail)


@post("/ui/tasks/{task_id:str}/resubmit", status_code=200)
async def resubmit(
    request: Request[Any, Any, Any], ctx: Ctx, task_id: TaskIdPath
) -> Response[Any] | Template:
    """Resubmit the ended task; go to the new task's page."""
    async with api(request, ctx) as a:
        got = await a.post("/v1/tasks/{task_id}/resubmit", task_id, body={})
    if not got.ok:
        return flash(ctx, got, f"resubmit {task_id}")
    new_id = quote(str(got.body["task_id"]), safe="")
    return Response(None, status_code=200, headers={"HX-Redirect": f"/tasks/{new_id}"})


@post("/ui/deployments/{name:str}/scale", status_code=200)
async def scale(request: Request[Any, Any, Any], ctx: Ctx, name: Name) -> Template:
    """Set the deployment's replica count; re-render the deployments."""
    form = await _form(request, ScaleForm)
    replicas = int(form.replicas) if form and form.replicas.strip().isdigit() else None
    async with api(request, ctx) as a:
        if replicas is None:
            return flash(ctx, Fetched(400, message="replicas must be a whole number"), "scale")
        got = await a.post("/v1/deployments/{name}/scale", name, body={"replicas": replicas})
        if not got.ok:
            return flash(ctx, got, f"scale {name}")
        data = await views.deployments(a)
    return render(ctx, "_deployments.html", "deployments", **data)


@post("/ui/checkpoints/{owner:str}/{thread:str}/fork", status_code=200)
async def fork(
    request: Request[Any, Any, Any], ctx: Ctx, owner: Name, thread: Name
) -> Response[Any] | Template:
    """Fork the thread at a version into a new thread (same namespace); go to it."""
    form = await _form(request, ForkForm)
    if form is None or not form.new_thread.strip() or not form.version.strip().isdigit():
        return flash(ctx, Fetched(400, message="give a version and a new thread id"), "fork")
    new_thread = form.new_thread.strip()
    body = {"version": int(form.version), "new_thread": new_thread, "namespace": form.namespace}
    async with api(request, ctx) as a:
        got = await a.post(
            "/v1/checkpoints/{owner}/threads/{thread}/fork", owner, thread, body=body
        )
    if not got.ok:
        return flash(ctx, got, f"fork {thread}")
    target = f"/checkpoints/{quote(owner, safe='')}/{quote(new_thread, safe='')}"
    if form.namespace:
        target += f"?namespace={quote(form.namespace, safe='')}"
    return Response(None, status_code=200, headers={"HX-Redirect": target})


@post("/ui/approvals/{approval_id:str}/decision", status_code=200)
async def decide(request: Request[Any, Any, Any], ctx: Ctx, approval_id: Name) -> Template:
    """Decide a pending approval; re-render the approvals."""
    form = await _form(request, DecisionForm)
    if form is None:
        return flash(ctx, Fetched(400, message="choose an option"), "decide")
    body = {"option": form.option, "comment": form.comment}
    async with api(request, ctx) as a:
        got = await a.post("/v1/approvals/{approval_id}/decision", approval_id, body=body)
        if not got.ok:
            return flash(ctx, got, f"decide {approval_id}")
        data = await views.approvals(a)
    return render(ctx, "_approvals.html", "approvals", **data)


ACTION_ROUTES = [cancel, resubmit, scale, fork, decide]
