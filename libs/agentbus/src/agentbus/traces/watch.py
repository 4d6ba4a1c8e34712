"""``Traces.watch``: live deposits, merged from one ordered consumer per trace kind.

Each kind's consumer starts with the last message of every matching counter (which
seeds the per-location cache without being yielded: those are older deposits) and then
delivers every new deposit. A counter message carries the counter's new total, so the
location's strength after a deposit is the decayed sum of the cached counters of its
live epochs (``agentbus.traces``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from agentbus.errors import ContractError
from agentbus.messages import TraceKind
from agentbus.traces import _math as tm
from agentbus.traces._traces import TraceChange

if TYPE_CHECKING:
    from agentbus.traces._traces import Traces


async def watch_traces(
    traces: Traces, pattern: str, kinds: list[str] | None
) -> AsyncIterator[TraceChange]:
    """See ``Traces.watch``."""
    key_filter, exact = tm.glob_filter(pattern)
    names, js = traces.names, traces.bus.js
    queue: asyncio.Queue[tuple[TraceKind, Msg, int]] = asyncio.Queue()
    subs: dict[str, Any] = {}
    # (kind, location) -> {epoch: (value, stream sequence)}
    cache: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}

    async def follow(kind: TraceKind, *, started: bool) -> None:
        """Subscribe to ``kind``.

        Deposits up to the stream's current last sequence only seed the cache when the
        kind existed when the watch ``started``.
        """
        stream = names.trace_stream(kind.kind)
        try:
            seed_until = (await js.stream_info(stream)).state.last_seq if started else 0
        except nats.js.errors.NotFoundError:
            return

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait((kind, msg, seed_until))

        subject = f"{names.traces_all(kind.kind)[:-1]}*.{key_filter or '>'}"
        subs[kind.kind] = await js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            cb=on_msg,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )

    async def new_kinds(started: bool) -> None:
        wanted = (
            [await traces.kind(k) for k in kinds if k not in subs]
            if kinds is not None
            else [k for k in await traces.kinds() if k.kind not in subs]
        )
        for k in wanted:
            await follow(k, started=started)

    refresh_s = traces.kinds_refresh_s
    try:
        await new_kinds(started=True)
        checked = time.monotonic()
        while True:
            if kinds is None and time.monotonic() - checked > refresh_s:
                await new_kinds(started=False)
                checked = time.monotonic()
            try:
                kind, msg, seed_until = await asyncio.wait_for(queue.get(), refresh_s)
            except TimeoutError:
                continue
            try:
                _, epoch, location = tm.parse_subject(msg.subject, names.prefix)
                value = tm.counter_value(msg.data)
            except ContractError as exc:
                logger.warning("bad trace message skipped", subject=msg.subject, error=repr(exc))
                continue
            if not exact and not fnmatch.fnmatchcase(location, pattern):
                continue
            seq = msg.metadata.sequence.stream
            counters = cache.setdefault((kind.kind, location), {})
            if (prev := counters.get(epoch)) is not None and prev[1] >= seq:
                continue  # an ordered consumer's restart replayed it
            counters[epoch] = (value, seq)
            if seq <= seed_until:
                continue
            now = traces.clock()
            live = tm.live_epochs(kind, now)
            for e in [e for e in counters if e not in live]:
                del counters[e]
            amount, at = tm.deposit_headers(msg.headers)
            strength = tm.strength(kind, {e: v for e, (v, _) in counters.items()}, now)
            yield TraceChange(
                location=location, kind=kind.kind, strength=strength, amount=amount, at=at
            )
    finally:
        for sub in subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
