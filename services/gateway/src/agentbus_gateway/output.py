"""``GET /v1/tasks/{task_id}/output``: a task's output as JSON, however large.

An output over ``inline_max_bytes`` (64 KiB) is not in the task record (its view has
``output: null`` and ``output_ref``); this route streams it from the Object Store
chunk by chunk (``agentbus.bus.blobs.open_blob``), never holding it whole, and checks
its SHA-256 at the end: a mismatch cuts the connection before the body completes
(the ``Content-Length`` is announced), so a client never takes corrupt bytes as the
output. The digest is also sent as ``Repr-Digest`` (RFC 9530) for clients to check.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream
from loguru import logger

from agentbus.bus.blobs import open_blob
from agentbus.errors import NotFoundError
from agentbus.messages import BlobRef
from agentbus_gateway.auth import needs
from agentbus_gateway.models import TaskIdPath
from agentbus_gateway.routes import Ctx, GatewayContext, error_responses


@get(
    "/v1/tasks/{task_id:str}/output",
    summary="Get a task's output",
    description=(
        "The output of a succeeded task as JSON, inline or streamed from the Object Store "
        "(outputs over 64 KiB are not in the task view: its output_url points here). "
        "404 unknown task, or a task without output (not succeeded)."
    ),
    media_type=MediaType.JSON,
    responses={
        200: ResponseSpec(
            data_container=Any, description="the output (any JSON value)", generate_examples=False
        ),
        **error_responses(404, 503),
    },
    tags=["tasks"],
    **needs("tasks:read"),
)
async def task_output(task_id: TaskIdPath, ctx: Ctx) -> Response[bytes] | Stream:
    """The output of ``task_id``.

    Raises:
        NotFoundError: no such task, it has not succeeded, or its stored output is gone.
    """
    record = await ctx.client.get(task_id)
    if record.status != "succeeded":
        raise NotFoundError(f"task {task_id!r} has no output (status {record.status})")
    ref = record.output_ref
    if ref is None:
        return Response(bytes(record.output), media_type=MediaType.JSON)
    chunks = await open_blob(ctx.bus, ref)
    digest = base64.b64encode(bytes.fromhex(ref.sha256)).decode()
    return Stream(
        _logged(ctx, task_id, ref, chunks),
        media_type=MediaType.JSON,
        headers={"Content-Length": str(ref.size_bytes), "Repr-Digest": f"sha-256=:{digest}:"},
    )


async def _logged(
    ctx: GatewayContext, task_id: str, ref: BlobRef, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """``chunks``, logging and counting a stream that fails (then re-raising: cut)."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        ctx.metrics.service.bad_messages.labels("gateway", "/v1/tasks/{task_id}/output").inc()
        logger.error("task output stream cut", task_id=task_id, blob=ref.name, error=str(exc))
        raise
