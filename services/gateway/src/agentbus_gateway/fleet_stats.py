"""Queue depth per capability and band, and recent task throughput, read from streams.

Queue depth: one ``$JS.API.CONSUMER.LIST`` on the tasks stream (256 consumers a
page) gives every band consumer's ``num_pending`` (queued, not yet delivered) and
``num_ack_pending`` (delivered, not acknowledged: running). Band consumers are
named ``cap-<capability>`` (band 0) and ``cap-<capability>-p<band>``
(``agentbus.names.Names.task_consumer``); others are ignored.

Throughput: the terminal task events (``<p>.events.task.<status>.<task_id>``) stored
in the last ``window_s`` seconds, counted by ``agentbus.bus.consumers.count_matching``
(an ephemeral consumer's ``num_pending`` from a start time: no event is read). It
is exact for the window as long as the events stream retains it, costs four
requests, and needs no counter kept in the gateway (any number of gateways agree).
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import nats.errors
import nats.js.errors

from agentbus.bus import Bus
from agentbus.bus.consumers import count_matching
from agentbus.errors import UnavailableError
from agentbus.messages import TERMINAL_STATUSES, utcnow
from agentbus_gateway.fleet_models import QueueDepth, TaskRate

_BAND_CONSUMER = re.compile(r"^cap-(?P<capability>[a-z0-9][a-z0-9_-]*?)(?:-p(?P<band>[1-9]))?$")
_PAGE = 256
"""Consumers one ``CONSUMER.LIST`` answer holds."""
RATE_WINDOW_S = 60.0
"""The window of ``TaskRate``."""


def band_of(consumer: str) -> tuple[str, int] | None:
    """``(capability, band)`` of a band consumer's name, None for any other name."""
    if (m := _BAND_CONSUMER.match(consumer)) is None:
        return None
    return m.group("capability"), int(m.group("band") or 0)


async def queue_depths(bus: Bus) -> list[QueueDepth]:
    """Depth of every capability's bands with tasks pending or in flight, sorted.

    Raises:
        UnavailableError: the tasks stream cannot be read.
    """
    stream = bus.names.tasks_stream
    out: list[QueueDepth] = []
    offset = 0
    try:
        while True:
            page = await bus.js.consumers_info(stream, offset=offset or None)
            for info in page:
                parsed = band_of(info.name or "")
                pending, in_flight = info.num_pending or 0, info.num_ack_pending or 0
                if parsed is not None and (pending or in_flight):
                    capability, band = parsed
                    out.append(
                        QueueDepth(
                            capability=capability, band=band, pending=pending, in_flight=in_flight
                        )
                    )
            offset += len(page)
            if len(page) < _PAGE:
                break
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise UnavailableError(f"cannot list the consumers of {stream}: {exc!r}") from exc
    return sorted(out, key=lambda q: (q.capability, q.band))


async def task_rate(bus: Bus, window_s: float = RATE_WINDOW_S) -> TaskRate:
    """Tasks that ended in the last ``window_s`` seconds (module doc).

    Raises:
        UnavailableError: the events stream cannot be read.
    """
    names = bus.names
    since = utcnow() - timedelta(seconds=window_s)
    ended_filters = [names.task_event_subject(s, "*") for s in sorted(TERMINAL_STATUSES)]
    ended, succeeded = await asyncio.gather(
        count_matching(bus, names.events_stream, ended_filters, start_time=since),
        count_matching(
            bus, names.events_stream, [names.task_event_subject("succeeded", "*")], start_time=since
        ),
    )
    return TaskRate(
        window_s=window_s, ended=ended, succeeded=succeeded, ended_per_s=ended / window_s
    )
