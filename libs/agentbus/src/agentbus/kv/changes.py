"""What changed in a mirrored KV bucket, key by key (``agentbus.kv.mirror``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)
Operation = Literal["PUT", "DEL", "PURGE", "ABSENT"]
"""What changed a key: a put, a delete, a purge (a TTL expiry too), or ABSENT: a
replay found no entry at all for a key the mirror held (its history was removed)."""


@dataclass(frozen=True, slots=True)
class KvChange(Generic[T]):
    """One key's change, as ``on_entry`` receives it.

    Attributes:
        key: the KV key.
        old: its value before (None: absent).
        new: its value now (None: deleted, purged, expired, undecodable or refused
            by ``check``, or absent from a replay).
        operation: what made the change; a bad put has ``"PUT"`` and ``new`` None.
        revision: the entry's revision (0 for ``"ABSENT"``).
        replayed: found by a (re)start's replay, not as a live update.
    """

    key: str
    old: T | None
    new: T | None
    operation: Operation
    revision: int
    replayed: bool
