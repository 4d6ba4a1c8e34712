"""The arithmetic and subject layout of trace counters (see ``agentbus.traces``).

Epoch ``e`` of a kind starts at ``t0 = e * epoch_s``; a deposit of ``a`` at ``t`` adds
``round(a * scale * 2^((t - t0)/h))`` to the counter of its epoch, and the strength at
``now`` is ``sum_e value_e / scale * 2^(-(now - t0_e)/h)`` over the live epochs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec

from agentbus.errors import ContractError
from agentbus.messages import TraceKind
from agentbus.messages.traces import EPOCH_HALF_LIVES
from agentbus.traces.locations import decode_location, encode_location

KIND_METADATA_KEY = "agentbus.trace_kind"
"""Stream metadata key holding the kind's ``TraceKind`` as JSON."""
AMOUNT_HEADER = "Agentbus-Trace-Amount"
AT_HEADER = "Agentbus-Trace-At"
MAX_FORGET_EPOCHS = 4
"""``forget_after_s`` is at most this many epochs (a read touches that many + 1)."""


class _Counter(msgspec.Struct):
    val: str


_decode_counter = msgspec.json.Decoder(_Counter).decode
decode_kind = msgspec.json.Decoder(TraceKind).decode


def counter_value(data: bytes | None) -> int:
    """The total of a stored counter message (body ``{"val": "<integer>"}``).

    Raises:
        ContractError: the body is not a counter value.
    """
    try:
        return int(_decode_counter(data or b'{"val":"0"}').val)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ContractError(f"not a counter value: {(data or b'')[:80]!r}: {exc}") from None


def complete_kind(kind: TraceKind) -> TraceKind:
    """``kind`` with ``epoch_s`` and ``forget_after_s`` filled in (its stored form).

    Raises:
        ContractError: ``forget_after_s`` exceeds ``MAX_FORGET_EPOCHS`` epochs.
    """
    epoch_s = EPOCH_HALF_LIVES * kind.half_life_s
    forget_s = kind.forget_after_s if kind.forget_after_s is not None else max(1.0, epoch_s)
    if forget_s > MAX_FORGET_EPOCHS * epoch_s:
        raise ContractError(
            f"trace kind {kind.kind!r}: forget_after_s {forget_s} is more than "
            f"{MAX_FORGET_EPOCHS} epochs of {epoch_s} s ({EPOCH_HALF_LIVES} half-lives)"
        )
    return msgspec.structs.replace(kind, epoch_s=epoch_s, forget_after_s=forget_s)


def _epoch_s(kind: TraceKind) -> float:
    return kind.epoch_s or EPOCH_HALF_LIVES * kind.half_life_s


def epoch_of(kind: TraceKind, t: float) -> int:
    """The epoch that time ``t`` (Unix seconds) falls in."""
    return math.floor(t / _epoch_s(kind))


def increment(kind: TraceKind, amount: float, t: float) -> tuple[int, int]:
    """``(epoch, counter increment)`` of depositing ``amount`` at time ``t``."""
    epoch = epoch_of(kind, t)
    factor = 2 ** ((t - epoch * _epoch_s(kind)) / kind.half_life_s)
    return epoch, round(amount * kind.scale * factor)


def live_epochs(kind: TraceKind, now: float) -> range:
    """Epochs whose counters may still be stored at ``now``, oldest first."""
    forget_s = kind.forget_after_s or _epoch_s(kind)
    current = epoch_of(kind, now)
    return range(current - math.ceil(forget_s / _epoch_s(kind)), current + 1)


def strength(kind: TraceKind, counters: dict[int, int], now: float) -> float:
    """Strength at ``now`` of the counters ``{epoch: stored value}`` of one location."""
    e_s = _epoch_s(kind)
    return sum(
        v / kind.scale * 2 ** (-(now - e * e_s) / kind.half_life_s) for e, v in counters.items()
    )


def parse_subject(subject: str, prefix: str) -> tuple[str, int, str]:
    """``(kind, epoch, location)`` of ``<p>.traces.<kind>.<epoch>.<key>``.

    Raises:
        ContractError: not a trace subject.
    """
    head = f"{prefix}.traces."
    try:
        if not subject.startswith(head):
            raise ValueError(subject)
        kind, epoch, key = subject[len(head) :].split(".", 2)
        return kind, int(epoch), decode_location(key)
    except ValueError:
        raise ContractError(f"{subject!r} is not a trace subject") from None


def prefix_filter(prefix: str) -> str | None:
    """Subject key filter selecting the locations that start with ``prefix``.

    Whole ``/`` segments become tokens (``src/ag`` → ``src.>``); ``None`` = all. The
    caller still checks ``startswith`` for the partial last segment.
    """
    whole = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    return encode_location(whole) + ".>" if whole else None


def glob_filter(pattern: str) -> tuple[str | None, bool]:
    """``(subject key filter, exact)`` for a location glob (``*?[`` are wildcards)."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return prefix_filter(pattern[:i]), False
    return encode_location(pattern), True


def deposit_headers(headers: dict[str, str] | None) -> tuple[float, datetime]:
    """``(amount, at)`` of a deposit message from its agentbus headers (NaN/epoch if absent)."""
    h = headers or {}
    try:
        amount = float(h.get(AMOUNT_HEADER, "nan"))
        at = datetime.fromtimestamp(float(h.get(AT_HEADER, "0")), UTC)
    except (ValueError, OverflowError):
        return math.nan, datetime.fromtimestamp(0, UTC)
    return amount, at
