"""``POST /v1/events/{topic}``: an outside caller publishes an agent event.

The JSON body is the event's payload; ``?key=`` orders it among events of the same
key; the ``Idempotency-Key`` header is its id (``Nats-Msg-Id``), so a retried POST
within the stream's duplicate window (2 min) is stored once. Published through
``agentbus.events.publish_event`` with ``Agentbus-Source: gateway``. The request
guards of every route apply (JSON bodies only, no cross-site requests).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body

from agentbus.events import publish_event
from agentbus_gateway.auth import needs
from agentbus_gateway.models import EventIdempotencyKey, EventKey, EventPublished, TopicPath
from agentbus_gateway.routes import BODY_REFUSALS, Ctx, error_responses

SOURCE = "gateway"
"""``Agentbus-Source`` of the events the gateway publishes."""


@post(
    "/v1/events/{topic:str}",
    status_code=201,
    summary="Publish an event",
    description=(
        "Publishes the JSON body as an event on `topic` (subscribers of a matching "
        "pattern get it). 201 with its stream sequence; 200 with duplicate: true when an "
        "event with this Idempotency-Key was stored in the last 2 minutes. 400 bad topic "
        "(1-8 dot-separated tokens of [a-z0-9_-]), key or Idempotency-Key; 413 body over "
        "the gateway's max_body_bytes; 415 not JSON."
    ),
    responses={
        200: ResponseSpec(data_container=EventPublished, description="a repeated event id"),
        **error_responses(*BODY_REFUSALS, 503, 504),
    },
    tags=["events"],
    **needs("events:publish"),
)
async def publish_topic_event(
    topic: TopicPath,
    ctx: Ctx,
    data: Annotated[Any, Body(description="The event's payload: any JSON value")],
    key: EventKey = None,
    idempotency_key: EventIdempotencyKey = None,
) -> Response[EventPublished]:
    """Publish ``data`` on ``topic``.

    Raises:
        ContractError: a bad topic, key or event id (400).
        UnavailableError: no ``<P>_TOPICS`` stream (503).
        RequestTimeoutError: the stream did not ack in time (504).
    """
    sent = await publish_event(
        ctx.bus, topic, data, key=key, event_id=idempotency_key, source=SOURCE
    )
    view = EventPublished(seq=sent.seq, event_id=sent.event_id, duplicate=sent.duplicate)
    return Response(view, status_code=200 if sent.duplicate else 201)
