"""Stigmergy traces: marks on named locations that add up and decay.

A trace is a *strength* of some *kind* (``reviewed``, ``found_todo``) at a *location*
(any string: a path, a URL, a topic). Deposits add up; without deposits the strength
halves every ``half_life_s`` of its kind; strengths below the kind's ``floor`` read as
absent, and the server drops counters nobody touched for ``forget_after_s``::

    traces = Traces(bus)                       # or ctx.traces in a task handler
    await traces.deposit("src/app.py", "found_todo", 3)
    await traces.sense("src/app.py")           # {"found_todo": 2.99...}
    await traces.strongest("found_todo", "src/", n=5)
    claim = await traces.claim("src/app.py", ttl_s=30)   # None: someone holds it
    async for change in traces.watch("src/*"): ...

**Storage** (chosen by measurement against two other designs: ``docs/architecture.md``,
"Stigmergy traces"). One JetStream *counter* stream per kind (ADR-49,
``<P>_TRACES_<KIND>``, the kind's ``TraceKind`` in its metadata), one counter per
(kind, epoch, location) on ``<p>.traces.<kind>.<epoch>.<encode_location(location)>``.
Time is cut into epochs of ``epoch_s = 16 * half_life_s``; epoch ``e`` starts at
``t0 = e * epoch_s`` (Unix seconds). A deposit of ``a`` at ``t`` adds
``round(a * scale * 2^((t - t0)/h))`` (header ``Nats-Incr``): deposits are plain
increments, so concurrent ones commute and none is lost, with no read-modify-write and
no evaporator. The strength at ``now`` is ``sum_e value_e / scale * 2^(-(now - t0_e)/h)``
over the live epochs: exactly ``sum_i a_i * 2^(-(now - t_i)/h)`` up to the fixed-point
rounding (``scale`` = 1e6). Each deposit carries a unique ``Nats-Msg-Id``, so a deposit
retried after a lost acknowledgement counts once. The stream's ``max_age`` (the kind's
``forget_after_s``) makes the server forget counters nobody deposited on for that long.

Kind streams are created and listed by ``agentbus.traces.kinds``; claims are in
``agentbus.traces.claims``, ``watch`` in ``agentbus.traces.watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import TraceClaim, TraceKind
from agentbus.names import check_token
from agentbus.traces import _math as tm
from agentbus.traces import claims as trace_claims
from agentbus.traces.claims import Claim
from agentbus.traces.kinds import list_kinds, load_or_create_kind
from agentbus.traces.locations import encode_location

__all__ = ["Claim", "TraceChange", "TraceKind", "Traces"]


@dataclass(frozen=True, slots=True)
class TraceChange:
    """One deposit seen by ``Traces.watch``.

    Attributes:
        location: where.
        kind: the trace kind.
        strength: the location's strength of ``kind`` right after the deposit.
        amount: the deposited amount.
        at: when it was deposited (the depositor's clock, UTC).
    """

    location: str
    kind: str
    strength: float
    amount: float
    at: datetime


_BY_BUS: weakref.WeakKeyDictionary[Bus, Traces] = weakref.WeakKeyDictionary()


class Traces:
    """Deposit, sense, rank, watch and claim traces on ``bus``.

    Args:
        bus: the connection (``ensure()`` must have created ``<p>_trace_claims``).
        kinds: configurations used when a kind's stream does not exist yet. A kind that
            exists keeps its stored configuration (first writer wins; ``define`` says
            when it differs).
        half_life_s: half-life of kinds created without an entry in ``kinds``.
        floor: floor of kinds created without an entry in ``kinds``.
        holder: this instance's name in the claims it takes (default: random).
        kinds_refresh_s: how long the list of kinds (``sense`` without ``kinds``,
            ``watch``) is reused before it is read again.
        clock: wall-clock time in Unix seconds (deposit times, decay).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        kinds: Iterable[TraceKind] = (),
        half_life_s: float = 3600.0,
        floor: float = 0.01,
        holder: str | None = None,
        kinds_refresh_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.names = bus.names
        self._defaults = {k.kind: k for k in kinds}
        self._default = TraceKind(kind="default", half_life_s=half_life_s, floor=floor)
        self.holder = holder or f"traces-{uuid.uuid4().hex[:12]}"
        self._kinds: dict[str, TraceKind] = {}
        self._listed_at = -math.inf
        self.kinds_refresh_s = kinds_refresh_s
        self.clock = clock

    @classmethod
    def of(cls, bus: Bus) -> Traces:
        """The shared ``Traces`` of ``bus`` (what ``TaskContext.traces`` returns)."""
        if (traces := _BY_BUS.get(bus)) is None:
            traces = _BY_BUS[bus] = cls(bus)
        return traces

    # -- kinds ----------------------------------------------------------------------
    async def define(
        self,
        kind: str,
        *,
        half_life_s: float | None = None,
        floor: float | None = None,
        forget_after_s: float | None = None,
    ) -> TraceKind:
        """Create ``kind`` with this configuration, or check that the stored one matches.

        Unset arguments take this instance's defaults for ``kind``.

        Raises:
            ContractError: invalid kind token or values.
            ConflictError: ``kind`` exists with a different configuration.
        """
        base = self._defaults.get(kind, self._default)
        try:
            wanted = tm.complete_kind(
                msgspec.convert(
                    {
                        "type": "TraceKind",
                        "kind": check_token("trace kind", kind),
                        "half_life_s": base.half_life_s if half_life_s is None else half_life_s,
                        "floor": base.floor if floor is None else floor,
                        "forget_after_s": base.forget_after_s
                        if forget_after_s is None
                        else forget_after_s,
                    },
                    TraceKind,
                )
            )
        except msgspec.ValidationError as exc:
            raise ContractError(f"trace kind {kind!r}: {exc}") from None
        stored = await self._load_or_create(wanted)
        if stored != wanted:
            raise ConflictError(
                f"trace kind {kind!r} exists with half_life_s={stored.half_life_s}, "
                f"floor={stored.floor}, forget_after_s={stored.forget_after_s}"
            )
        return stored

    async def kind(self, kind: str) -> TraceKind:
        """The stored configuration of ``kind``, creating the kind if it is new.

        Raises:
            ContractError: ``kind`` is not a valid token.
        """
        if (known := self._kinds.get(kind)) is not None:
            return known
        base = self._defaults.get(kind, self._default)
        wanted = msgspec.structs.replace(base, kind=check_token("trace kind", kind))
        return await self._load_or_create(tm.complete_kind(wanted))

    async def kinds(self, *, refresh: bool = True) -> list[TraceKind]:
        """Every stored kind, sorted by name (one ``$JS.API.STREAM.LIST`` request per 256).

        With ``refresh=False`` a list younger than ``kinds_refresh_s`` is reused.
        """
        if refresh or time.monotonic() - self._listed_at > self.kinds_refresh_s:
            self._kinds = await list_kinds(self.bus)
            self._listed_at = time.monotonic()
        return sorted(self._kinds.values(), key=lambda k: k.kind)

    async def _load_or_create(self, wanted: TraceKind) -> TraceKind:
        stored = await load_or_create_kind(self.bus, wanted)
        self._kinds[stored.kind] = stored
        return stored

    # -- deposit and read -------------------------------------------------------------
    async def deposit(self, location: str, kind: str, amount: float = 1.0) -> None:
        """Add ``amount`` (> 0) to the strength of ``kind`` at ``location``, now.

        Exactly once: a deposit whose acknowledgement timed out is retried (3 attempts
        in all) with the same ``Nats-Msg-Id``, which the server counts once.

        Raises:
            ContractError: bad location, kind or amount (not finite, <= 0, below 1e-6).
            RequestTimeoutError: the server did not confirm the deposit.
            UnavailableError: the server refused it, or the kind's stream vanished.
        """
        if not (math.isfinite(amount) and amount > 0):
            raise ContractError(f"a deposit amount must be finite and > 0, got {amount}")
        key = encode_location(location)
        k = await self.kind(kind)
        t = self.clock()
        epoch, inc = tm.increment(k, amount, t)
        if inc < 1:
            raise ContractError(f"a deposit of {amount} is below the resolution 1/{k.scale}")
        subject = self.names.trace_subject(k.kind, epoch, key)
        headers = {
            "Nats-Incr": f"+{inc}",
            "Nats-Msg-Id": uuid.uuid4().hex,
            tm.AMOUNT_HEADER: repr(float(amount)),
            tm.AT_HEADER: f"{t:.6f}",
        }
        timeout = self.bus.settings.request_timeout_s

        async def publish() -> None:  # publish() mutates its headers: a copy each time
            await self.bus.js.publish(subject, b"", headers=dict(headers), timeout=timeout)

        try:
            try:  # the first attempt outside tenacity, which costs ~60 µs a call
                await publish()
            except TimeoutError:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(2),
                    wait=wait_exponential(multiplier=0.1, max=1.0),
                    retry=retry_if_exception_type(TimeoutError),
                    reraise=True,
                ):
                    with attempt:
                        await publish()
        except TimeoutError as exc:
            raise RequestTimeoutError(subject, timeout) from exc
        except nats.errors.NoRespondersError as exc:
            self._kinds.pop(kind, None)  # the stream was deleted: re-create on next use
            raise UnavailableError(f"no trace stream for kind {kind!r}") from exc
        except nats.js.errors.APIError as exc:
            raise UnavailableError(f"deposit on {subject} refused: {exc}") from exc

    async def _counters(self, k: TraceKind, key: str, now: float) -> dict[int, int]:
        stream = self.names.trace_stream(k.kind)

        async def one(epoch: int) -> tuple[int, int]:
            subject = self.names.trace_subject(k.kind, epoch, key)
            try:
                msg = await self.bus.js.get_msg(stream, subject=subject, direct=True)
            except nats.js.errors.NotFoundError:
                return epoch, 0
            return epoch, tm.counter_value(msg.data)

        pairs = await asyncio.gather(*(one(e) for e in tm.live_epochs(k, now)))
        return {e: v for e, v in pairs if v}

    async def sense(self, location: str, *, kinds: Iterable[str] | None = None) -> dict[str, float]:
        """``{kind: strength}`` at ``location`` now, for kinds at or above their floor.

        ``kinds`` limits the kinds read (default: every kind, from a list at most
        ``kinds_refresh_s`` old). One direct get per kind and live epoch (2 by default).

        Raises:
            ContractError: bad location or kind.
        """
        key = encode_location(location)
        if kinds is None:
            ks = await self.kinds(refresh=False)
        else:
            ks = [await self.kind(k) for k in kinds]
        now = self.clock()
        counters = await asyncio.gather(*(self._counters(k, key, now) for k in ks))
        out = {}
        for k, c in zip(ks, counters, strict=True):
            if (s := tm.strength(k, c, now)) > 0 and s >= k.floor:
                out[k.kind] = s
        return out

    async def strength(self, location: str, kind: str) -> float:
        """The strength of ``kind`` at ``location`` now (0.0 below the floor)."""
        return (await self.sense(location, kinds=[kind])).get(kind, 0.0)

    async def snapshot(
        self, kind: str, key_filter: str | None = None
    ) -> AsyncIterator[tuple[str, int, int]]:
        """Every stored counter of ``kind`` as ``(location, epoch, value)``.

        ``key_filter`` narrows it (``encode_location(...)``, optionally + ``.>``). Read
        through an ephemeral consumer delivering the last message per subject; counters
        written meanwhile may or may not be seen.

        Raises:
            RequestTimeoutError: the consumer stopped delivering.
        """
        k = await self.kind(kind)
        stream = self.names.trace_stream(k.kind)
        subject = f"{self.names.traces_all(k.kind)[:-1]}*.{key_filter or '>'}"
        info = await self.bus.js.add_consumer(
            stream,
            ConsumerConfig(
                name=f"traces-snap-{uuid.uuid4().hex[:12]}",
                filter_subject=subject,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        assert info.name is not None
        remaining = info.num_pending or 0
        sub = await self.bus.js.pull_subscribe_bind(info.name, stream=stream)
        try:
            while remaining > 0:
                try:
                    msgs = await sub.fetch(batch=min(remaining, 256), timeout=5)
                except TimeoutError as exc:
                    raise RequestTimeoutError(subject, 5.0) from exc
                for m in msgs:
                    _, epoch, location = tm.parse_subject(m.subject, self.names.prefix)
                    yield location, epoch, tm.counter_value(m.data)
                remaining -= len(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(stream, info.name)

    async def strongest(self, kind: str, prefix: str = "", n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` strongest locations of ``kind`` starting with ``prefix`` now.

        Returns ``[(location, strength)]``, strongest first (ties by location), without
        locations below the kind's floor. Whole ``/`` segments of ``prefix`` narrow the
        read on the server; the rest is matched here.

        Raises:
            ContractError: ``n`` < 1, or a bad kind.
        """
        if n < 1:
            raise ContractError(f"n must be at least 1, got {n}")
        k = await self.kind(kind)
        per_location: dict[str, dict[int, int]] = {}
        async for location, epoch, value in self.snapshot(k.kind, tm.prefix_filter(prefix)):
            if location.startswith(prefix):
                per_location.setdefault(location, {})[epoch] = value
        now = self.clock()
        ranked = [(loc, tm.strength(k, c, now)) for loc, c in per_location.items()]
        ranked = [(loc, s) for loc, s in ranked if s > 0 and s >= k.floor]
        ranked.sort(key=lambda p: (-p[1], p[0]))
        return ranked[:n]

    def watch(
        self, pattern: str = "*", *, kinds: Iterable[str] | None = None
    ) -> AsyncIterator[TraceChange]:
        """Live deposits on locations matching the glob ``pattern``, as ``TraceChange``s.

        ``pattern`` is an ``fnmatch`` glob (``*`` also matches ``/``; a pattern without
        ``*?[`` is one location). Only deposits made after the watch started are
        yielded, plus every deposit of a kind created while watching; decay and
        forgetting yield nothing. ``kinds`` limits the kinds (default: all, new kinds
        picked up within ``kinds_refresh_s``). Runs until the iterator is closed.
        """
        from agentbus.traces.watch import watch_traces

        return watch_traces(self, pattern, None if kinds is None else list(kinds))

    # -- claims -----------------------------------------------------------------------
    async def claim(
        self, location: str, ttl_s: float = 30.0, *, holder: str | None = None
    ) -> Claim | None:
        """Claim ``location`` exclusively for ``ttl_s`` s; ``None`` if someone holds it.

        ``ttl_s`` is rounded up to whole seconds, at least 1 (server TTLs are whole).

        Raises:
            ContractError: bad location or ``ttl_s``.
            UnavailableError: the claims bucket refused the write.
        """
        return await trace_claims.claim(self.bus, location, ttl_s, holder or self.holder)

    async def claimed(self, location: str) -> TraceClaim | None:
        """Who holds ``location`` now, or ``None``."""
        return await trace_claims.claimed(self.bus, location)
