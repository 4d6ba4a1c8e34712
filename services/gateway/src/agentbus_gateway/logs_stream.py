"""``GET /v1/logs/{agent_id}``: a replica's output lines as Server-Sent Events.

Supervisors ship each output line of a replica as a ``LogLine`` on
``<p>.logs.<agent_id>`` (stream ``<P>_LOGS``, whatever node runs it). The stream
starts at the last ``lines`` retained lines (``agentbus.fleet.logs.last_lines_start``)
and follows live through the event stream's paced loop
(``event_stream.paced_stream``: the same slots, keep-alives, slow-client cut-off).
Each line is one SSE message: ``id:`` its stream sequence, ``event: log``, ``data:``
the ``LogLine`` JSON; ``Last-Event-ID`` resumes after a line.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter
from litestar.response import ServerSentEventMessage
from nats.aio.msg import Msg

from agentbus.events.reader import OrderedReader, Start
from agentbus.fleet.logs import last_lines_start, to_line
from agentbus.messages import encode
from agentbus_gateway.auth import needs
from agentbus_gateway.event_stream import EVENT_STREAM, LastEventId, paced_stream, parse_start
from agentbus_gateway.models import TOKEN_PATTERN, SseEvent
from agentbus_gateway.routes import Ctx, error_responses
from agentbus_gateway.sse import PacedEvents

AgentPath = Annotated[
    str,
    PathParameter(
        pattern=TOKEN_PATTERN,
        description="Agent id (replica r of deployment d is d-r): 1-64 characters of [a-z0-9_-]",
    ),
]
_LOG_RESPONSE = {
    200: ResponseSpec(
        data_container=SseEvent,
        media_type=EVENT_STREAM,
        description="Server-Sent Events: `id:` stream sequence, `event: log`, `data:` a "
        "LogLine's JSON; `event: error` ends a stream the gateway cut off.",
        generate_examples=False,
    )
}


@get(
    "/v1/logs/{agent_id:str}",
    summary="Follow a replica's log (Server-Sent Events)",
    description=(
        "The agent's last `lines` retained output lines (0: none), then its new lines as "
        "they are shipped, across restarts and moves between nodes. Each is `event: log` "
        "with the LogLine JSON (`stream` stdout or stderr, `node_id`, `at`, `line`); "
        "`Last-Event-ID` resumes after a line (and wins over `lines`). 429/503 over the "
        "stream caps."
    ),
    media_type=EVENT_STREAM,
    responses={**_LOG_RESPONSE, **error_responses(503)},
    tags=["fleet"],
    **needs("fleet:read"),
)
async def follow_logs(
    agent_id: AgentPath,
    request: Request[Any, Any, Any],
    ctx: Ctx,
    last_event_id: LastEventId = None,
    lines: Annotated[
        int, QueryParameter(ge=0, le=10_000, description="Retained lines to send first")
    ] = 100,
) -> PacedEvents:
    """The history then live output of ``agent_id``."""
    names = ctx.bus.names
    start: Start
    if last_event_id is not None:
        start = parse_start(last_event_id, None, None)
    elif lines == 0:
        start = None
    else:
        start = await last_lines_start(ctx.bus, agent_id, lines)
    reader = OrderedReader(
        ctx.bus,
        names.logs_stream,
        [names.log_subject(agent_id)],
        start=start,
        batch=ctx.settings.sse_batch,
    )
    metrics = ctx.metrics

    def render(msg: Msg) -> tuple[ServerSentEventMessage | None, bool]:
        metrics.sse_events.inc()
        seq = msg.metadata.sequence.stream
        return ServerSentEventMessage(
            id=seq, event="log", data=encode(to_line(msg)).decode()
        ), False

    return paced_stream(ctx, request, reader, start, render)


LOG_ROUTES = [follow_logs]
