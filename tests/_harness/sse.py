"""Server-Sent Events for the gateway tests: read a stream, publish events to read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse

from agentbus.bus import Bus
from agentbus.messages import TaskEvent, utcnow


def is_event(sse: ServerSentEvent) -> bool:
    """An event the gateway sent (not the opening ``retry:`` message)."""
    return bool(sse.id) or sse.event in ("error", "gap")


async def read_sse(
    http: httpx.AsyncClient,
    url: str,
    *,
    until: Callable[[list[ServerSentEvent]], bool],
    headers: dict[str, str] | None = None,
    params: dict[str, str | list[str]] | None = None,
    timeout_s: float = 15.0,
) -> list[ServerSentEvent]:
    """The events of one connection to ``url`` until ``until(events)`` holds or it ends;
    then the connection is dropped."""
    events: list[ServerSentEvent] = []
    async with asyncio.timeout(timeout_s):
        async with aconnect_sse(
            http, "GET", url, headers=dict(headers or {}), params=params
        ) as source:
            source.response.raise_for_status()
            async for sse in source.aiter_sse():
                if not is_event(sse):
                    continue
                events.append(sse)
                if until(events):
                    break
    return events


def count(n: int) -> Callable[[list[ServerSentEvent]], bool]:
    return lambda events: len(events) >= n


def up_to(seq: int) -> Callable[[list[ServerSentEvent]], bool]:
    return lambda events: bool(events) and events[-1].id != "" and int(events[-1].id) >= seq


async def publish_task_event(
    bus: Bus,
    task_id: str,
    status: str,
    *,
    capability: str = "echo",
    agent_id: str | None = None,
) -> int:
    """A ``TaskEvent`` on the events stream; its stream sequence."""
    event = TaskEvent(
        task_id=task_id,
        capability=capability,
        status=status,  # type: ignore[arg-type]
        at=utcnow(),
        agent_id=agent_id,
    )
    subject = bus.names.task_event_subject(status, task_id)
    ack = await bus.js.publish(subject, msgspec.json.encode(event))
    return ack.seq


async def publish_raw(bus: Bus, entity: str, kind: str, payload: object) -> int:
    """Any JSON on ``<p>.events.<entity>.<kind>``; its stream sequence."""
    ack = await bus.js.publish(bus.names.event_subject(entity, kind), msgspec.json.encode(payload))
    return ack.seq
