"""A thread's head as the service reads it (KV ``<prefix>.latest``, ``CheckpointHead``).

The head names the thread's latest version. Version numbers are never given out
twice while the head exists: when ``DeleteCheckpoints`` deletes the latest versions,
the head moves back to the newest version left and keeps the highest number given
out in ``last_version``; when it deletes every version, the head stays as an *emptied*
head (``checkpoint_id`` "", ``version`` 0), which reads as an empty thread. A put
appends ``next_version``, so it never writes under the keys of a version being
deleted. ``DeleteThread`` removes the head too, and the thread starts over at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentbus.messages import CheckpointHead

__all__ = ["Head"]


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
