"""Exclusive, expiring claims on trace locations (``Traces.claim``).

A claim is the key ``encode_location(location)`` in KV ``<p>_trace_claims`` holding a
``TraceClaim``, written with a per-message TTL (ADR-43): ``create`` succeeds only when
nobody holds the location, the server removes the entry when its TTL lapses (so a
crashed holder's claim frees itself), ``renew`` is a compare-and-set write on the
revision the holder last wrote, ``release`` a compare-and-set purge whose marker
expires after 1 s (no tombstone per location is kept).
"""

from __future__ import annotations

import contextlib
import math
from types import TracebackType

import msgspec
import nats.js.errors

from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import TraceClaim, encode, utcnow
from agentbus.traces.locations import encode_location

_WRONG_LAST_SEQUENCE = (10071, 10164)
_decode_claim = msgspec.json.Decoder(TraceClaim).decode


class Claim:
    """An exclusive claim on ``location``, held by ``holder`` (from ``Traces.claim``).

    An async context manager (released on exit), or call ``release``. Nobody else can
    claim the location until it is released or ``ttl_s`` passes without a ``renew``.
    """

    def __init__(self, bus: Bus, location: str, holder: str, revision: int, ttl_s: int) -> None:
        self._bus = bus
        self.location = location
        self.holder = holder
        self.revision = revision
        self.ttl_s = ttl_s

    async def renew(self) -> bool:
        """Restart the TTL; ``False`` if the claim had lapsed (another may hold it now)."""
        value = encode(
            TraceClaim(
                location=self.location, holder=self.holder, ttl_s=self.ttl_s, claimed_at=utcnow()
            )
        )
        try:
            self.revision = await _write(self._bus, self.location, value, self.revision, self.ttl_s)
        except ConflictError:
            return False
        return True

    async def release(self) -> bool:
        """Give the location up now; ``False`` if the claim had already lapsed."""
        try:
            await _write(self._bus, self.location, b"", self.revision, 1, purge=True)
        except ConflictError:
            return False
        return True

    async def __aenter__(self) -> Claim:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(UnavailableError, RequestTimeoutError):
            await self.release()


async def claim(bus: Bus, location: str, ttl_s: float, holder: str) -> Claim | None:
    """See ``Traces.claim``."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ContractError(f"ttl_s must be > 0, got {ttl_s}")
    ttl = max(1, math.ceil(ttl_s))
    key = encode_location(location)
    kv = await bus.kv(bus.names.trace_claims_bucket)
    value = encode(TraceClaim(location=location, holder=holder, ttl_s=ttl, claimed_at=utcnow()))
    try:
        revision = await kv.create(key, value, msg_ttl=ttl)
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
        # KeyNotFoundError: held when we wrote, expired before nats-py's create re-read it
        return None
    except nats.js.errors.APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            return None
        raise UnavailableError(f"claim on {location!r} failed: {exc}") from exc
    except TimeoutError as exc:
        subject = f"$KV.{bus.names.trace_claims_bucket}.{key}"
        raise RequestTimeoutError(subject, bus.settings.request_timeout_s) from exc
    return Claim(bus, location, holder, revision, ttl)


async def claimed(bus: Bus, location: str) -> TraceClaim | None:
    """See ``Traces.claimed``."""
    kv = await bus.kv(bus.names.trace_claims_bucket)
    try:
        entry = await kv.get(encode_location(location))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return _decode_claim(entry.value) if entry.value else None


async def _write(
    bus: Bus, location: str, value: bytes, revision: int, ttl_s: int, *, purge: bool = False
) -> int:
    subject = f"$KV.{bus.names.trace_claims_bucket}.{encode_location(location)}"
    headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
    if purge:  # a delete marker: history 1, and the bucket refuses rollups (agents write it)
        headers |= {"KV-Operation": "DEL"}
    try:
        ack = await bus.js.publish(subject, value, headers=headers, msg_ttl=ttl_s)
    except nats.js.errors.APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            raise ConflictError(f"the claim on {location!r} lapsed") from exc
        raise UnavailableError(f"claim write on {location!r} failed: {exc}") from exc
    except TimeoutError as exc:
        raise RequestTimeoutError(subject, bus.settings.request_timeout_s) from exc
    return ack.seq
