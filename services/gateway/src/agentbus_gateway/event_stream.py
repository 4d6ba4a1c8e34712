"""``GET /v1/events`` and ``GET /v1/tasks/{task_id}/events``: the events stream as SSE.

Each HTTP client gets its own ``OrderedReader`` (``agentbus.events.reader``) on
``<P>_EVENTS``, filtered by ``event_filters``. Every event is one SSE message:
``id:`` its stream sequence, ``event:`` its kind (``task.succeeded``), ``data:`` the
event's JSON as stored. ``Last-Event-ID`` (or ``?since=``) resumes after that
sequence. The reader fetches only once the previous events were handed to the HTTP
server (``sse.PacedEvents``), so a client costs at most ``sse_batch`` events of
memory; a client that takes nothing for ``sse_send_timeout_s`` or lags more than
``sse_max_lag_events`` for ``sse_max_lag_s`` is cut off with a final
``event: error``. The wire format is in ``docs/protocol.md`` ("Event stream over HTTP").
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEventMessage
from loguru import logger
from nats.aio.msg import Msg

from agentbus.errors import AgentBusError, ContractError
from agentbus.events.reader import OrderedReader, Start
from agentbus.messages import TERMINAL_STATUSES
from agentbus_gateway.auth import needs
from agentbus_gateway.event_filters import EventFilter, event_filter, kind_of
from agentbus_gateway.models import SseEvent, TaskIdPath
from agentbus_gateway.routes import Ctx, GatewayContext, error_responses
from agentbus_gateway.sse import PacedEvents

EVENT_STREAM = "text/event-stream"
SLOW_CLIENT = "slow consumer: resume with Last-Event-ID"
"""Start of the final ``event: error`` data of a client cut off for being slow."""
_MAX_WAIT_S = 1.0
"""Longest single fetch: how soon a stream notices the gateway stopping."""

SinceParam = Annotated[
    str | None,
    QueryParameter(
        max_length=64,
        description="Start after this stream sequence (0: the whole stream), or at this "
        "time (RFC 3339). Last-Event-ID wins over it. Default: new events only.",
    ),
]
LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        max_length=20,
        description="Resume after this stream sequence (an id: the stream sent).",
    ),
]
_STREAM_RESPONSE = {
    200: ResponseSpec(
        data_container=SseEvent,
        media_type=EVENT_STREAM,
        description="Server-Sent Events: `id:` stream sequence, `event:` kind, `data:` "
        "the event's JSON; `event: error` ends a stream the gateway cut off "
        "(docs/protocol.md, Event stream over HTTP).",
        generate_examples=False,
    )
}


def parse_start(last_event_id: str | None, since: str | None, default: Start) -> Start:
    """The reader's start: after ``Last-Event-ID``, else after/at ``since``, else ``default``.

    Raises:
        ContractError: either is not a sequence (``since`` also not a time) (400).
    """
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise ContractError(f"Last-Event-ID {last_event_id[:20]!r} is not a stream sequence")
        return int(last_event_id) + 1
    if since is None:
        return default
    if since.strip().isdigit():
        return int(since) + 1
    try:
        at = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(f"since {since[:64]!r} is neither a sequence nor a time") from None
    if at.tzinfo is None:
        raise ContractError(f"since {since[:64]!r} needs a time zone (Z or +hh:mm)")
    return at


def _decode(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None


def _token_id(request: Request[Any, Any, Any]) -> str:
    return str(request.state.get("token_id", "anonymous"))


Render = Callable[[Msg], tuple[ServerSentEventMessage | None, bool]]
"""What one stream message becomes: the SSE message to send (None: skip it) and
whether the stream ends after it."""


def event_render(
    ctx: GatewayContext, selected: EventFilter, *, until_terminal: bool = False
) -> Render:
    """Events as SSE messages (``id`` sequence, ``event`` kind), ``selected`` ones only.

    With ``until_terminal`` the stream ends after a task's terminal event.
    """
    names, metrics = ctx.bus.names, ctx.metrics

    def render(msg: Msg) -> tuple[ServerSentEventMessage | None, bool]:
        payload = _decode(msg.data)
        if not selected.matches(msg.subject, payload):
            return None, False
        kind = kind_of(msg.subject, names)
        metrics.sse_events.inc()
        seq = msg.metadata.sequence.stream
        end = (
            until_terminal
            and isinstance(payload, dict)
            and payload.get("status") in TERMINAL_STATUSES
            and kind.startswith("task.")
        )
        return ServerSentEventMessage(id=seq, event=kind, data=msg.data.decode()), end

    return render


def paced_stream(
    ctx: GatewayContext,
    request: Request[Any, Any, Any],
    reader: OrderedReader,
    start: Start,
    render: Render,
) -> PacedEvents:
    """The paced SSE response of ``reader``'s messages as ``render`` makes them.

    Takes one of the token's stream slots (released, and ``reader`` closed, when the
    response ends). Used by the event streams here and ``agentbus_gateway.logs_stream``.

    Raises:
        RateLimitedError: the token has its most streams open (429).
        UnavailableError: the gateway has its most streams open (503).
    """
    s, metrics = ctx.settings, ctx.metrics
    release: Callable[[], None] = ctx.streams.acquire(_token_id(request))
    route = str(request.scope.get("path_template", ""))
    position = {"last": start - 1 if isinstance(start, int) else None}

    def cut_off(reason: str, message: str) -> ServerSentEventMessage:
        metrics.sse_cutoffs.labels(reason).inc()
        logger.warning(
            "event stream cut off", route=route, reason=reason, last_event_id=position["last"]
        )
        return ServerSentEventMessage(event="error", data=message)

    async def events() -> AsyncGenerator[ServerSentEventMessage, None]:
        yield ServerSentEventMessage(data=None, retry=s.sse_retry_ms, comment="stream open")
        opened_at = sent_at = lagging_since = time.monotonic()
        lagging = False
        while True:
            if ctx.stop.is_set():
                yield cut_off("stopping", "gateway stopping: resume with Last-Event-ID")
                return
            if s.sse_max_duration_s and time.monotonic() - opened_at > s.sse_max_duration_s:
                yield cut_off("duration", "stream time limit: resume with Last-Event-ID")
                return
            try:
                msgs = await reader.fetch(min(_MAX_WAIT_S, s.sse_keepalive_s))
            except AgentBusError as exc:
                yield cut_off("unavailable", f"unavailable: {exc}; resume with Last-Event-ID")
                return
            if reader.skipped is not None:
                first, last = reader.skipped
                reader.skipped = None
                yield ServerSentEventMessage(
                    event="gap",
                    data=msgspec.json.encode({"from_seq": first, "to_seq": last}).decode(),
                )
            for msg in msgs:
                position["last"] = msg.metadata.sequence.stream
                sse, end = render(msg)
                if sse is not None:
                    sent_at = time.monotonic()
                    yield sse
                if end:
                    return
            now = time.monotonic()
            if reader.pending <= s.sse_max_lag_events:
                lagging = False
            elif not lagging:
                lagging, lagging_since = True, now
            elif now - lagging_since > s.sse_max_lag_s:
                yield cut_off("lagging", f"{SLOW_CLIENT} ({reader.pending} events behind)")
                return
            if now - sent_at >= s.sse_keepalive_s:
                sent_at = now
                yield ServerSentEventMessage(data=None, comment="keep-alive")

    def on_slow() -> ServerSentEventMessage:
        return cut_off(
            "send_timeout", f"{SLOW_CLIENT} (took no data for {s.sse_send_timeout_s:g} s)"
        )

    async def on_end() -> None:
        release()
        await reader.close()

    return PacedEvents(
        events(),
        send_timeout_s=s.sse_send_timeout_s,
        final_grace_s=s.sse_final_grace_s,
        on_slow=on_slow,
        on_end=on_end,
    )


@get(
    "/v1/events",
    summary="Follow events (Server-Sent Events)",
    description=(
        "Streams the events stream as Server-Sent Events. `id:` is the event's stream "
        "sequence, `event:` its kind (`task.succeeded`, `agent.joined`, `error.agent`), "
        "`data:` its JSON. Send `Last-Event-ID` (or `since`) to resume after a sequence "
        "with no gap and no duplicate. Filters: `kind` (repeatable: `task`, "
        "`task.failed`, `*.joined`), `task_id`, `capability`, `agent`, `deployment`. A "
        "`: keep-alive` comment comes every keep-alive interval. 429/503 over the stream "
        "caps."
    ),
    media_type=EVENT_STREAM,
    responses={**_STREAM_RESPONSE, **error_responses(503)},
    tags=["events"],
    **needs("events:read"),
)
async def follow_events(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    last_event_id: LastEventId = None,
    since: SinceParam = None,
    kind: Annotated[
        list[str] | None, QueryParameter(description="Event kind(s): entity[.kind]")
    ] = None,
    task_id: Annotated[str | None, QueryParameter(description="One task's events")] = None,
    capability: Annotated[str | None, QueryParameter(description="Payload capability")] = None,
    agent: Annotated[str | None, QueryParameter(description="Payload agent_id")] = None,
    deployment: Annotated[str | None, QueryParameter(description="Payload deployment")] = None,
) -> PacedEvents:
    """The filtered events stream from the requested start (module doc)."""
    selected = event_filter(
        ctx.bus.names,
        kinds=kind,
        task_id=task_id,
        capability=capability,
        agent=agent,
        deployment=deployment,
    )
    start = parse_start(last_event_id, since, None)
    reader = OrderedReader(
        ctx.bus,
        ctx.bus.names.events_stream,
        selected.subjects,
        start=start,
        batch=ctx.settings.sse_batch,
    )
    return paced_stream(ctx, request, reader, start, event_render(ctx, selected))


@get(
    "/v1/tasks/{task_id:str}/events",
    summary="Follow one task's events (Server-Sent Events)",
    description=(
        "One task's events as Server-Sent Events (format of GET /v1/events): its history "
        "from the start of the events stream, then live; the stream ends after the "
        "task's terminal event (a resubmit is a new task). 204 when there is nothing "
        "more to send (the task ended and its events up to Last-Event-ID were sent: "
        "browsers stop reconnecting on 204). 404 unknown task."
    ),
    media_type=EVENT_STREAM,
    responses={
        **_STREAM_RESPONSE,
        204: ResponseSpec(None, description="the task ended; nothing more to send"),
        **error_responses(404, 503),
    },
    tags=["events", "tasks"],
    **needs("events:read"),
)
async def follow_task_events(
    task_id: TaskIdPath,
    request: Request[Any, Any, Any],
    ctx: Ctx,
    last_event_id: LastEventId = None,
    since: SinceParam = None,
) -> PacedEvents | Response[None]:
    """The history then live events of ``task_id`` until its terminal event."""
    record = await ctx.client.get(task_id)  # NotFoundError -> 404
    selected = event_filter(ctx.bus.names, task_id=task_id)
    start = parse_start(last_event_id, since, 1)
    reader = OrderedReader(
        ctx.bus,
        ctx.bus.names.events_stream,
        selected.subjects,
        start=start,
        batch=ctx.settings.sse_batch,
    )
    await reader.open()
    if record.terminal and reader.pending == 0:
        await reader.close()
        return Response(None, status_code=204)
    try:
        render = event_render(ctx, selected, until_terminal=True)
        return paced_stream(ctx, request, reader, start, render)
    except BaseException:
        await reader.close()
        raise


EVENT_ROUTES = [follow_events, follow_task_events]
