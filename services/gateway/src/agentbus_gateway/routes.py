"""HTTP route handlers: tasks, agents, nodes, health, metrics, OpenAPI alias.

Handlers get the shared ``GatewayContext`` by dependency injection (``ctx``), so
they hold no module-level state. Each route that needs a token names its scope with
``**needs(scope)`` (``agentbus_gateway.auth``); ``/healthz`` and the OpenAPI
document are open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentbus.audit import AuditSettings
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import RequestTimeoutError
from agentbus.messages import SubmitReply, TaskRecord, TaskStatus
from agentbus_gateway.auth import Authenticator, needs
from agentbus_gateway.errors import RequestRefusedError
from agentbus_gateway.metrics import GatewayMetrics
from agentbus_gateway.models import (
    AgentList,
    CancelView,
    CapabilityFilter,
    CreateTask,
    ErrorBody,
    Health,
    IdempotencyKey,
    NodeList,
    ParentFilter,
    ResubmitBody,
    TaskIdPath,
    TaskList,
    TaskView,
    WaitBody,
    WaitReply,
    task_view,
)
from agentbus_gateway.settings import GatewaySettings
from agentbus_gateway.sse import StreamSlots

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """What the handlers share: bus, client, settings, metrics, stop, auth, streams, audit."""

    bus: Bus
    client: Client
    settings: GatewaySettings
    metrics: GatewayMetrics
    stop: asyncio.Event
    auth: Authenticator
    streams: StreamSlots
    audit: AuditSettings


Ctx = NamedDependency[GatewayContext]
"""A handler parameter ``ctx: Ctx`` receives the app's ``GatewayContext``."""


REFUSALS = (400, 403)
"""What any route may answer before its handler runs: unknown Host, cross-site."""
AUTH_REFUSALS = (401, 403, 429)
"""What a route needing a token may answer: no valid token, scope missing, rate limit."""
BODY_REFUSALS = (413, 415)
"""What a route taking a JSON body may answer: over ``max_body_bytes``, not JSON."""


def error_responses(*statuses: int, auth: bool = True) -> dict[int, ResponseSpec]:
    """OpenAPI error responses: ``statuses`` plus the refusals every route may give.

    With ``auth`` (a route that needs a token) also 401, 403 and 429.
    """
    every = {*REFUSALS, *statuses, *(AUTH_REFUSALS if auth else ())}
    return {
        s: ResponseSpec(data_container=ErrorBody, description="error", generate_examples=False)
        for s in sorted(every)
    }


def _created_or_existing(description: str) -> dict[int, ResponseSpec]:
    """A 200 response for a repeated create (the 201 is the handler's own)."""
    return {200: ResponseSpec(data_container=TaskView, description=description)}


@post(
    "/v1/tasks",
    status_code=201,
    summary="Submit a task",
    description=(
        "201 with the new record, 200 with the existing one for a repeated task_id (or "
        "Idempotency-Key: send one to retry safely). 404 unknown parent_id; 413 body "
        "over the gateway's max_body_bytes (10 MiB by default); 415 not JSON."
    ),
    responses={
        **_created_or_existing("the task already existed (same task_id)"),
        **error_responses(404, *BODY_REFUSALS, 503, 504),
    },
    tags=["tasks"],
    **needs("tasks:submit"),
)
async def create_task(
    data: JSONBody[CreateTask], ctx: Ctx, idempotency_key: IdempotencyKey = None
) -> Response[TaskView]:
    """Submit one task through the scheduler; idempotent by ``task_id``.

    Raises:
        RequestRefusedError: ``Idempotency-Key`` and a body ``task_id`` differ (400).
    """
    task_id = data.task_id or idempotency_key
    if idempotency_key is not None and task_id != idempotency_key:
        raise RequestRefusedError(
            400,
            f"{idempotency_key!r} differs from the body's task_id {task_id!r}",
            "Idempotency-Key",
        )
    client = ctx.client
    request = await client.build_task(
        data.capability,
        data.input,
        task_id=task_id,
        priority=data.priority,
        max_attempts=data.max_attempts,
        timeout_s=data.timeout_s,
        parent_id=data.parent_id,
        tenant=data.tenant,
        metadata=data.metadata,
        deadline=data.deadline,
        backoff=data.backoff,
    )
    reply = await ctx.bus.request(
        ctx.bus.names.endpoint("scheduler", "submit"), request, SubmitReply
    )
    return Response(task_view(reply.task), status_code=201 if reply.created else 200)


@get(
    "/v1/tasks/{task_id:str}",
    summary="Get a task",
    description=(
        "The task record. With wait_s > 0, waits until the task is terminal or wait_s "
        "elapses (clamped to the gateway's max_wait_s), then returns the current record."
    ),
    responses=error_responses(404, 503),
    tags=["tasks"],
    **needs("tasks:read"),
)
async def get_task(
    task_id: TaskIdPath,
    ctx: Ctx,
    wait_s: Annotated[
        float, QueryParameter(ge=0, description="Seconds to wait for the result")
    ] = 0.0,
) -> TaskView:
    """The current record of ``task_id``, optionally after waiting for it to finish."""
    client = ctx.client
    record = await client.get(task_id)  # NotFoundError -> 404
    wait_s = min(wait_s, ctx.settings.max_wait_s)
    if record.terminal or wait_s <= 0 or ctx.stop.is_set():
        return task_view(record)
    try:
        done = await _until_stopped(ctx, client.wait(task_id, timeout_s=wait_s))
    except RequestTimeoutError:
        done = None
    return task_view(done or await client.get(task_id))


@get(
    "/v1/tasks",
    summary="List tasks by status",
    description=(
        "One page of tasks, at most `limit`. `status=dead` (the default, without "
        "`parent_id` or `tenant`) reads the dead-letter index, newest first, and `total` "
        "counts every match; any other "
        "status (or `any`) reads the task records in the order they were last written, "
        "a bounded number per request, so a page may be short while `next_cursor` is "
        "set. Pass `next_cursor` back as `cursor` for the next page."
    ),
    responses=error_responses(503, 504),
    tags=["tasks"],
    **needs("tasks:read"),
)
async def list_tasks(
    ctx: Ctx,
    status: Annotated[
        TaskStatus | Literal["any"], QueryParameter(description="Task status, or any")
    ] = "dead",
    capability: CapabilityFilter = None,
    parent_id: ParentFilter = None,
    tenant: Annotated[
        str | None, QueryParameter(max_length=256, description="Only this tenant")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Most tasks")] = 100,
    cursor: Annotated[
        str | None, QueryParameter(max_length=256, description="next_cursor of a page")
    ] = None,
) -> TaskList:
    """One page of tasks from the scheduler's listing."""
    reply = await ctx.client.list_tasks(
        None if status == "any" else status,
        capability=capability,
        parent_id=parent_id,
        limit=limit,
        cursor=cursor,
        tenant=tenant,
    )
    return TaskList(
        tasks=[task_view(t) for t in reply.tasks], total=reply.total, next_cursor=reply.next_cursor
    )


@post(
    "/v1/tasks/{task_id:str}/resubmit",
    status_code=201,
    summary="Resubmit an ended task",
    description=(
        "Runs a dead, failed or expired task again as a new task (fresh attempt budget, "
        "`resubmit_of` = the old id). 201 with the new record, 200 when the request is "
        "repeated; 404 unknown task, 409 not resubmittable or new id taken."
    ),
    responses={
        **_created_or_existing("the request was repeated: the task it created"),
        **error_responses(404, 409, *BODY_REFUSALS, 503, 504),
    },
    tags=["tasks"],
    **needs("tasks:cancel"),
)
async def resubmit_task(
    task_id: TaskIdPath, data: JSONBody[ResubmitBody], ctx: Ctx
) -> Response[TaskView]:
    """Resubmit ``task_id`` through the scheduler."""
    reply = await ctx.client.resubmit(
        task_id,
        new_task_id=data.new_task_id,
        max_attempts=data.max_attempts,
        deadline=data.deadline,
    )
    return Response(task_view(reply.task), status_code=201 if reply.created else 200)


@post(
    "/v1/tasks/{task_id:str}/cancel",
    status_code=200,
    summary="Cancel a task",
    description=(
        "Cancels the task and, unless recursive=false, its subtasks all the way down (a "
        "task that handed off is followed to the task that took its work). A queued "
        "task never starts; a running one has its handler cancelled within a second. "
        "A task that had already ended keeps its status: `cancelled` lists what this "
        "call cancelled. 404 unknown task."
    ),
    responses=error_responses(404, *BODY_REFUSALS, 503, 504),
    tags=["tasks"],
    **needs("tasks:cancel"),
)
async def cancel_task(
    task_id: TaskIdPath,
    ctx: Ctx,
    recursive: Annotated[bool, QueryParameter(description="Cancel the subtasks too")] = True,
    reason: Annotated[str, QueryParameter(max_length=500, description="Recorded reason")] = "",
) -> CancelView:
    """Cancel ``task_id`` (and its subtree) through the scheduler."""
    reply = await ctx.client.cancel(task_id, recursive=recursive, reason=reason)
    return CancelView(task=task_view(reply.task), cancelled=reply.cancelled)


@post(
    "/v1/tasks/wait",
    status_code=200,
    summary="Wait for several tasks",
    description=(
        "Waits until every listed task (until=all) or one of them (until=any) has "
        "ended, or wait_s seconds (clamped to the gateway's max_wait_s) have passed, "
        "then returns their records in request order and the ids still pending. No "
        "polling: the gateway follows the records' updates. 404 if a task is unknown."
    ),
    responses=error_responses(404, *BODY_REFUSALS, 503, 504),
    tags=["tasks"],
    **needs("tasks:read"),
)
async def wait_tasks(data: JSONBody[WaitBody], ctx: Ctx) -> WaitReply:
    """The records of ``data.task_ids`` once they ended (or the wait ran out)."""
    client = ctx.client
    ids = list(dict.fromkeys(data.task_ids))
    current = dict(zip(ids, await asyncio.gather(*(client.get(t) for t in ids)), strict=True))
    ended: dict[str, TaskRecord] = {}
    wait_s = min(data.wait_s, ctx.settings.max_wait_s)

    async def collect() -> None:
        pairs = client.completed(ids, timeout_s=wait_s, follow_handoffs=data.follow_handoffs)
        async for asked, record in pairs:
            ended[asked] = record
            if data.until == "any":
                return

    if wait_s > 0:
        try:
            await _until_stopped(ctx, collect())
        except RequestTimeoutError:
            pass
    else:  # no wait: report what has ended (hand-offs are not followed)
        ended = {t: r for t, r in current.items() if r.terminal}
    records = [ended.get(t) or await client.get(t) for t in ids]
    return WaitReply(
        tasks=[task_view(r) for r in records],
        pending=[t for t, r in zip(ids, records, strict=True) if not r.terminal],
    )


async def _until_stopped(ctx: GatewayContext, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it ends or the gateway stops (then None).

    Raises:
        Exception: whatever ``work`` raised.
    """
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(ctx.stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # a cancelled wait still ends its subscriptions before we go on
        task.cancel()
        stopping.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


@get(
    "/v1/agents",
    summary="List live agents",
    responses=error_responses(503, 504),
    tags=["registry"],
    **needs("fleet:read"),
)
async def list_agents(ctx: Ctx, capability: CapabilityFilter = None) -> AgentList:
    """Live agents from the registry, optionally only those with ``capability``."""
    return AgentList(agents=await ctx.client.agents(capability))


@get(
    "/v1/nodes",
    summary="List live nodes",
    responses=error_responses(503, 504),
    tags=["registry"],
    **needs("fleet:read"),
)
async def list_nodes(ctx: Ctx) -> NodeList:
    """Live nodes from the registry."""
    return NodeList(nodes=await ctx.client.nodes())


@get(
    "/healthz",
    summary="Health",
    responses={503: ResponseSpec(Health), **error_responses(auth=False)},
    tags=["ops"],
)
async def healthz(ctx: Ctx) -> Response[Health]:
    """200 while the NATS connection is up, else 503."""
    nc = ctx.bus.nc
    if nc.is_connected:
        return Response(Health(status="ok", nats="connected"))
    state = "reconnecting" if nc.is_reconnecting else "closed" if nc.is_closed else "disconnected"
    return Response(Health(status="unavailable", nats=state), status_code=503)


@get("/metrics", include_in_schema=False, media_type=CONTENT_TYPE_LATEST, **needs("metrics:read"))
async def metrics(ctx: Ctx) -> Response[bytes]:
    """Prometheus text exposition of the gateway's registry."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@get("/openapi.json", include_in_schema=False, media_type=MediaType.JSON)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document (also served at ``/schema/openapi.json``)."""
    return request.app.openapi_schema.to_schema()


ROUTES = [
    create_task,
    get_task,
    list_tasks,
    resubmit_task,
    cancel_task,
    wait_tasks,
    list_agents,
    list_nodes,
    healthz,
    metrics,
    openapi_json,
]
