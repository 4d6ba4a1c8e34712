"""Dashboard pages (``GET``): each full page, and the fragment htmx refreshes it with.

One handler serves both: ``/<page>`` renders ``<page>.html``, ``/ui/<page>`` its
fragment ``_<page>.html`` from the same data. A page renders its fragment inline (it
shows without waiting for a script); the fragment's container then re-fetches
``/ui/<page>`` when an event of the page's kinds arrives on ``GET /v1/events`` (htmx's
SSE extension) or on a timer for what no event reports (replica CPU and memory, trace
strengths).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import PathParameter, QueryParameter
from litestar.response import Template

from agentbus_gateway.dashboard import views
from agentbus_gateway.dashboard.api import Api
from agentbus_gateway.models import TaskIdPath
from agentbus_gateway.routes import Ctx, GatewayContext

TextFilter = Annotated[str, QueryParameter(max_length=128)]
Name = Annotated[str, PathParameter(min_length=1, max_length=256)]
"""An owner, thread, agent or deployment name in a dashboard path (the API checks it)."""
STATUSES = ("any", "queued", "running", "succeeded", "failed", "cancelled", "expired", "dead")


def api(request: Request[Any, Any, Any], ctx: GatewayContext) -> Api:
    """The in-process API client acting as this request's dashboard user."""
    return Api(request, auth=ctx.settings.auth_required)


def render(ctx: GatewayContext, template: str, page: str, **context: Any) -> Template:
    """``template`` with the layout's context (active ``page``, whether login is on)."""
    return Template(
        template_name=template,
        context={"page": page, "auth": ctx.settings.auth_required, **context},
    )


def template(request: Request[Any, Any, Any], name: str, fragment: str | None = None) -> str:
    """``<name>.html`` for the page, ``_<fragment or name>.html`` under ``/ui/``."""
    if request.url.path.startswith("/ui/"):
        return f"_{fragment or name}.html"
    return f"{name}.html"


@get(["/", "/ui/overview"])
async def overview_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Nodes and their replicas, task rate, queue depth, dead letters."""
    async with api(request, ctx) as a:
        data = await views.overview(a)
    return render(ctx, template(request, "overview"), "overview", **data)


@get(["/tasks", "/ui/tasks"])
async def tasks_page(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    status: TextFilter = "any",
    capability: TextFilter = "",
    tenant: TextFilter = "",
) -> Template:
    """Tasks filtered by status, capability and tenant (``/ui/tasks``: the table)."""
    filters = {"status": status, "capability": capability, "tenant": tenant}
    async with api(request, ctx) as a:
        rows = await views.task_rows(a, **filters)
    name = template(request, "tasks", "task_rows")
    return render(ctx, name, "tasks", statuses=STATUSES, filters=filters, **rows)


@get(["/tasks/{task_id:str}", "/ui/tasks/{task_id:str}"])
async def task_page(request: Request[Any, Any, Any], ctx: Ctx, task_id: TaskIdPath) -> Template:
    """One task: attempts, subtasks, input and output, its events live.

    ``/ui/tasks/{task_id}``: the record part, refreshed on each of the task's events.
    """
    async with api(request, ctx) as a:
        detail = await views.task_detail(a, task_id)
    return render(ctx, template(request, "task"), "tasks", task_id=task_id, **detail)


@get(["/deployments", "/ui/deployments"])
async def deployments_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Deployments: replicas wanted and running, placements, unplaced reasons, scale."""
    async with api(request, ctx) as a:
        data = await views.deployments(a)
    return render(ctx, template(request, "deployments"), "deployments", **data)


@get(["/agents", "/ui/agents"])
async def agents_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Live agents by capability."""
    async with api(request, ctx) as a:
        data = await views.agents(a)
    return render(ctx, template(request, "agents"), "agents", **data)


async def _checkpoints(
    request: Request[Any, Any, Any],
    ctx: GatewayContext,
    owner: str | None,
    thread: str | None,
    namespace: str = "",
) -> Template:
    async with api(request, ctx) as a:
        data = await views.checkpoints(a, owner, thread, namespace)
    return render(
        ctx,
        "checkpoints.html",
        "checkpoints",
        owner=owner,
        thread=thread,
        namespace=namespace,
        **data,
    )


@get("/checkpoints")
async def checkpoint_owners_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Agents (owners) holding checkpoints."""
    return await _checkpoints(request, ctx, None, None)


@get("/checkpoints/{owner:str}")
async def checkpoint_threads_page(
    request: Request[Any, Any, Any], ctx: Ctx, owner: Name
) -> Template:
    """An owner's threads (in every namespace)."""
    return await _checkpoints(request, ctx, owner, None)


@get("/checkpoints/{owner:str}/{thread:str}")
async def checkpoint_versions_page(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    owner: Name,
    thread: Name,
    namespace: Annotated[str, QueryParameter(max_length=256)] = "",
) -> Template:
    """A thread's versions with their metadata, each with a fork form.

    ``?namespace=``: the thread's namespace (default the empty one).
    """
    return await _checkpoints(request, ctx, owner, thread, namespace)


@get(["/traces", "/ui/traces"])
async def traces_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """The strongest locations of every trace kind."""
    async with api(request, ctx) as a:
        data = await views.traces(a)
    return render(ctx, template(request, "traces"), "traces", **data)


async def _logs(
    request: Request[Any, Any, Any], ctx: GatewayContext, agent_id: str | None
) -> Template:
    async with api(request, ctx) as a:
        data = await views.agents(a)
        served = a.has("/v1/logs/{agent_id}")
    return render(ctx, "logs.html", "logs", agent_id=agent_id, logs_served=served, **data)


@get("/logs")
async def logs_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Pick a replica to follow."""
    return await _logs(request, ctx, None)


@get("/logs/{agent_id:str}")
async def replica_log_page(request: Request[Any, Any, Any], ctx: Ctx, agent_id: Name) -> Template:
    """Follow a replica's output (``GET /v1/logs/{agent_id}``: history, then live)."""
    return await _logs(request, ctx, agent_id)


@get(["/approvals", "/ui/approvals"])
async def approvals_page(request: Request[Any, Any, Any], ctx: Ctx) -> Template:
    """Pending approvals (approve or deny, with a comment) and recent decisions."""
    async with api(request, ctx) as a:
        data = await views.approvals(a)
    return render(ctx, template(request, "approvals"), "approvals", **data)


@get("/audit")
async def audit_page(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    view: TextFilter = "",
    task: TextFilter = "",
    agent: TextFilter = "",
    since: TextFilter = "",
    until: TextFilter = "",
) -> Template:
    """The audit trail (``GET /v1/audit/events``): approvals, one task, one agent.

    ``?task=ID`` alone shows that task's events; without a view, the approvals.
    """
    chosen = view if view in views.AUDIT_VIEWS else ("task" if task else "approvals")
    form = {"view": chosen, "task": task, "agent": agent, "since": since, "until": until}
    async with api(request, ctx) as a:
        data = await views.audit(a, **form)
    return render(
        ctx,
        "audit.html",
        "audit",
        form=form,
        views=views.AUDIT_VIEWS,
        audit_configured=ctx.audit.database_url is not None,
        **data,
    )


PAGE_ROUTES = [
    overview_page,
    tasks_page,
    task_page,
    deployments_page,
    agents_page,
    checkpoint_owners_page,
    checkpoint_threads_page,
    checkpoint_versions_page,
    traces_page,
    logs_page,
    replica_log_page,
    approvals_page,
    audit_page,
]
