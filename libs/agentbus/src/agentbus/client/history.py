"""A task's history: its ``TaskEvent``s still held by the events stream, oldest first."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js.api import DeliverPolicy

from agentbus.bus import Bus
from agentbus.client.waits import decode_event
from agentbus.errors import RequestTimeoutError
from agentbus.messages import TaskEvent
from agentbus.names import check_task_id


async def task_history(bus: Bus, task_id: str, *, timeout_s: float = 5.0) -> list[TaskEvent]:
    """Every ``TaskEvent`` of ``task_id`` in the events stream (``Client.history``).

    One stream-info request tells whether the task has any; then an ordered consumer
    replays ``<p>.events.task.*.<task_id>`` until ``num_pending`` reaches 0.

    Raises:
        ContractError: ``task_id`` is not a valid task id.
        RequestTimeoutError: the replay did not finish within ``timeout_s``.
    """
    subject = bus.names.task_history(check_task_id(task_id))
    info = await bus.js.stream_info(bus.names.events_stream, subjects_filter=subject)
    if not info.state.subjects:
        return []
    sub = await bus.js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list[TaskEvent] = []
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                try:
                    events.append(decode_event(msg.data))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass  # not a TaskEvent: skip it
                if msg.metadata.num_pending == 0:
                    return events
    except TimeoutError as exc:
        raise RequestTimeoutError(f"history of task {task_id}", timeout_s) from exc
    finally:
        await sub.unsubscribe()
