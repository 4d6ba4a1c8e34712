"""A thread's head as the service reads it (KV ``<prefix>.latest``, ``CheckpointHead``).

The head names the thread's latest version. Version numbers are never given out
twice while the head exists: when ``DeleteCheckpoints`` deletes the latest versions,
the head moves back to the newest version left and keeps the highest number given
out in ``last_version``; when it deletes every version, the head stays as an *emptied*
head (``checkpoint_id`` "", ``version`` 0), which reads as an empty thread. A put
appends ``next_version``, so it never writes under the keys of a version being
deleted. ``DeleteThread`` removes the head too, and the thread starts over at 1.

``HeadCache`` keeps the heads this process last read or wrote, so a put on a thread
with one writer skips reading its head. A cached head is only ever a guess: a put
built on it stores its version create-only and moves the head by compare-and-set on
the cached revision, so a head another instance (or a delete) moved meanwhile makes
the create or the head write fail, and the put reads the head afresh
(``agentbus_checkpoint.commit``); a put whose parent is not the cached head reads it
afresh before deciding it conflicts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from agentbus.messages import CheckpointHead

__all__ = ["HEAD_CACHE_MAX", "Head", "HeadCache"]

HEAD_CACHE_MAX = 10_000
"""Heads a ``HeadCache`` keeps (least recently used dropped first)."""


@dataclass(frozen=True, slots=True)
class Head:
    """A thread's head as read: its stored value (None if absent) and revision (0 if absent)."""

    stored: CheckpointHead | None
    revision: int

    @property
    def value(self) -> CheckpointHead | None:
        """The head of a thread with versions, None for an empty thread."""
        return self.stored if self.stored is not None and self.stored.checkpoint_id else None

    @property
    def checkpoint_id(self) -> str | None:
        """The latest checkpoint id, None for an empty thread."""
        return self.value.checkpoint_id if self.value else None

    def version_at_least(self, version: int) -> bool:
        """Whether the head names ``version`` or a later one."""
        return self.value is not None and self.value.version >= version

    @property
    def next_version(self) -> int:
        """The version number a put appends (numbers are never given out twice)."""
        s = self.stored
        return max(s.version, s.last_version) + 1 if s is not None else 1


class HeadCache:
    """The last known head per head key, least recently used dropped past ``max_entries``."""

    def __init__(self, max_entries: int = HEAD_CACHE_MAX) -> None:
        self.max_entries = max_entries
        self._heads: OrderedDict[str, Head] = OrderedDict()

    def get(self, key: str) -> Head | None:
        """The cached head of ``key``, None if none is cached."""
        head = self._heads.get(key)
        if head is not None:
            self._heads.move_to_end(key)
        return head

    def put(self, key: str, head: Head) -> None:
        """Remember ``head`` as ``key``'s, unless a later revision is cached."""
        known = self._heads.get(key)
        if known is None or known.revision <= head.revision:
            self._heads[key] = head
        self._heads.move_to_end(key)
        while len(self._heads) > self.max_entries:
            self._heads.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop ``key``'s head (it changed, or a put on it failed)."""
        self._heads.pop(key, None)
