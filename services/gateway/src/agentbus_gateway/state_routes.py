"""Agent state over HTTP: checkpoints (owners, threads, versions, fork) and traces.

Checkpoints go through the checkpoint service's requests
(``agentbus.state.checkpoints``: ``checkpoint_owners``, ``CheckpointClient``), so
versions are listed with their metadata only, never their data. Traces are read with
``agentbus.traces.Traces``; a kind that is not stored is a 404 (reading never
creates one).
"""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.params import JSONBody, QueryParameter

from agentbus.errors import ContractError, NotFoundError
from agentbus.state.checkpoints import CheckpointClient, checkpoint_owners
from agentbus.traces import Traces
from agentbus_gateway.auth import needs
from agentbus_gateway.routes import BODY_REFUSALS, Ctx, error_responses
from agentbus_gateway.state_models import (
    ForkBody,
    ForkView,
    KindList,
    KindPath,
    NamespaceParam,
    OwnerList,
    OwnerPath,
    RankedLocation,
    Strongest,
    ThreadList,
    ThreadPath,
    VersionList,
    version_view,
)

Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Most items")]


@get(
    "/v1/checkpoints/owners",
    summary="List checkpoint owners",
    description="The agent ids that hold at least one checkpoint thread, sorted.",
    responses=error_responses(503, 504),
    tags=["checkpoints"],
    **needs("fleet:read"),
)
async def list_owners(ctx: Ctx, limit: Limit = 1000) -> OwnerList:
    """Owners from the checkpoint service."""
    reply = await checkpoint_owners(ctx.bus, limit=limit)
    return OwnerList(owners=reply.owners, truncated=reply.truncated)


@get(
    "/v1/checkpoints/{owner:str}/threads",
    summary="List an owner's threads",
    description="The owner's threads and their namespaces, each with its latest version.",
    responses=error_responses(503, 504),
    tags=["checkpoints"],
    **needs("fleet:read"),
)
async def list_threads(owner: OwnerPath, ctx: Ctx) -> ThreadList:
    """Threads of ``owner`` (empty for an owner without checkpoints)."""
    client = CheckpointClient(ctx.bus, owner)
    threads = await client.threads()
    return ThreadList(owner=owner, threads=threads)


@get(
    "/v1/checkpoints/{owner:str}/threads/{thread:str}/versions",
    summary="List a thread's versions",
    description=(
        "One page of the thread's versions, newest first: metadata only (id, version, "
        "time, size, digest, parent, metadata, fork origin), never the data. Pass "
        "`next_before` back as `before` for the next page. 404 `before` is not a "
        "version of the thread."
    ),
    responses=error_responses(404, 503, 504),
    tags=["checkpoints"],
    **needs("fleet:read"),
)
async def list_versions(
    owner: OwnerPath,
    thread: ThreadPath,
    ctx: Ctx,
    namespace: NamespaceParam = "",
    limit: Limit = 100,
    before: Annotated[
        str | None,
        QueryParameter(min_length=1, max_length=256, description="next_before of a page"),
    ] = None,
) -> VersionList:
    """A page of ``thread``'s history."""
    page = await CheckpointClient(ctx.bus, owner).list(
        thread, namespace=namespace, limit=limit, before=before
    )
    return VersionList(
        owner=owner,
        thread_id=thread,
        versions=[version_view(c) for c in page.checkpoints],
        next_before=page.next_before,
    )


async def _checkpoint_id(client: CheckpointClient, thread: str, body: ForkBody) -> str | None:
    """The id of the version ``body`` names (None: the latest).

    Raises:
        NotFoundError: no such version number in the thread (404).
    """
    if body.version is None:
        return body.checkpoint_id
    async for c in client.history(thread, namespace=body.namespace):
        if c.version == body.version:
            return c.checkpoint_id
        if c.version < body.version:
            break
    raise NotFoundError(f"thread {thread!r} has no version {body.version}")


@post(
    "/v1/checkpoints/{owner:str}/threads/{thread:str}/fork",
    status_code=201,
    summary="Fork a thread",
    description=(
        "Starts `new_thread` (same owner and namespace) from a version of the thread: "
        "`version` (its number) or `checkpoint_id`, neither for the latest. The new "
        "thread's first version has that version's data and metadata (plus `metadata`) "
        "and names it in `forked_from`. 400 both `version` and `checkpoint_id`; 404 no "
        "such version; 409 `new_thread` is not empty."
    ),
    responses=error_responses(404, 409, *BODY_REFUSALS, 503, 504),
    tags=["checkpoints"],
    **needs("fleet:admin"),
)
async def fork_thread(
    owner: OwnerPath, thread: ThreadPath, data: JSONBody[ForkBody], ctx: Ctx
) -> ForkView:
    """Fork ``thread`` of ``owner`` into ``data.new_thread``.

    Raises:
        ContractError: both ``version`` and ``checkpoint_id`` (400).
    """
    if data.version is not None and data.checkpoint_id is not None:
        raise ContractError("give version or checkpoint_id, not both")
    client = CheckpointClient(ctx.bus, owner)
    checkpoint_id = await _checkpoint_id(client, thread, data)
    record = await client.fork(
        thread,
        data.new_thread,
        checkpoint_id=checkpoint_id,
        namespace=data.namespace,
        new_namespace=data.namespace,
        metadata=data.metadata,
    )
    return ForkView(owner=owner, thread_id=data.new_thread, checkpoint=version_view(record))


@get(
    "/v1/traces/kinds",
    summary="List trace kinds",
    description="Every stored trace kind with its half-life, floor and forgetting time.",
    responses=error_responses(503, 504),
    tags=["traces"],
    **needs("fleet:read"),
)
async def list_kinds(ctx: Ctx) -> KindList:
    """Every stored trace kind."""
    return KindList(kinds=await Traces(ctx.bus).kinds())


@get(
    "/v1/traces/{kind:str}/strongest",
    summary="Strongest locations of a trace kind",
    description=(
        "The `limit` locations where the kind is strongest now (decayed to now), "
        "strongest first, optionally only those starting with `prefix`; locations "
        "below the kind's floor are left out. 404 unknown kind."
    ),
    responses=error_responses(404, 503, 504),
    tags=["traces"],
    **needs("fleet:read"),
)
async def strongest(
    kind: KindPath,
    ctx: Ctx,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Most locations")] = 10,
    prefix: Annotated[
        str, QueryParameter(max_length=1024, description="Only locations starting so")
    ] = "",
) -> Strongest:
    """The strongest locations of ``kind``.

    Raises:
        NotFoundError: ``kind`` is not stored (404).
    """
    traces = Traces(ctx.bus)
    if kind not in {k.kind for k in await traces.kinds()}:  # strongest would create it
        raise NotFoundError(f"trace kind {kind!r} not found")
    ranked = await traces.strongest(kind, prefix, limit)
    return Strongest(
        kind=kind, locations=[RankedLocation(location=loc, strength=s) for loc, s in ranked]
    )


STATE_ROUTES = [list_owners, list_threads, list_versions, fork_thread, list_kinds, strongest]
