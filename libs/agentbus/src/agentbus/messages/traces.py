"""Stigmergy traces: the stored configuration of a trace kind, and a claim.

A trace is a strength of some *kind* at a *location*; deposits add up and decay with
the kind's half-life (``agentbus.traces`` and ``docs/protocol.md``, "Traces", give the
storage layout and the arithmetic a non-Python reader needs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from agentbus.messages.common import Message, Token

EPOCH_HALF_LIVES = 16
"""An epoch of a kind lasts this many half-lives (``TraceKind.epoch_s``)."""
TRACE_SCALE = 1_000_000
"""Fixed-point scale of the stored counters: a stored 1 is a strength of 1e-6."""


class TraceKind(Message, frozen=True, kw_only=True):
    """How traces of one kind behave.

    Stored as JSON in the metadata key ``agentbus.trace_kind`` of the kind's stream
    ``<P>_TRACES_<KIND>`` (first writer wins; ``nats stream info`` shows it).
    """

    kind: Token
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Strength halves every ``half_life_s`` seconds without deposits."""
    floor: Annotated[float, msgspec.Meta(ge=0)] = 0.01
    """Strengths below this read as absent (a cold trace is forgotten by readers)."""
    forget_after_s: Annotated[float, msgspec.Meta(ge=1)] | None = None
    """The server drops a counter untouched this long (the stream's ``max_age``);
    ``None``: one epoch (16 half-lives: what is left then is < 2e-5 of it)."""
    epoch_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Length of an epoch; filled in when stored: ``EPOCH_HALF_LIVES * half_life_s``."""
    scale: Annotated[int, msgspec.Meta(ge=1)] = TRACE_SCALE
    """Fixed-point scale of the counters."""


class TraceClaim(Message, frozen=True, kw_only=True):
    """Who holds the exclusive claim on a location.

    KV ``<p>_trace_claims`` value at key ``encode_location(location)``; the entry's
    per-message TTL (``ttl_s``) ends the claim unless the holder renews it.
    """

    location: str
    holder: str
    ttl_s: float
    claimed_at: datetime


MESSAGES: tuple[type[Message], ...] = (TraceKind, TraceClaim)
