"""How many replicas of one node may be starting at once (first starts and restarts).

Starting an agent is CPU-bound: the engine starts the container, then the interpreter
imports the agent library and the agent binds its consumers and registers. Many
replicas started at once on a small node share the CPU evenly and all register
together, at the end; the same starts queued a few at a time register one after
another, so the median replica is up in about half that time and the last no later
(less thrashing). The figures: ``docs/decisions/0002-restart-start-gate.md``.

A start holds one of ``limit`` slots (FIFO) from the engine call until the replica is
*up*: its agent registered (an ``AgentInfo`` started after the start was issued), it
ended, or ``hold_max_s`` passed (a slow or hung agent cannot block the queue for
long). Replicas that never register (images that are not agentbus agents) would hold
a slot for ``hold_max_s`` each, so a start waits for registration only when the
registry holds an entry of that replica's agent (a restart: its earlier instance
registered); other starts (first placements, a ramp) release their slot when the
engine call returns, so a ramp is not serialised behind agent start-ups.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime

from agentbus.messages import AgentInfo

HOLD_MAX_S = 10.0
"""Longest a start holds its slot waiting for the agent to register."""
POLL_S = 0.05
"""How often a held slot looks for the registration (a dict lookup)."""


def default_limit() -> int:
    """Starts at once per node: twice the CPU count.

    A start is about half CPU-bound; the rest is waiting for the engine and NATS.
    """
    return 2 * (os.cpu_count() or 1)


class Slot:
    """One held start slot; ``release`` gives it back (once, however often called)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    @property
    def held(self) -> bool:
        """Whether the slot is still held."""
        return self._slots is not None

    def release(self) -> None:
        """Give the slot back (no-op after the first call)."""
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class StartGate:
    """At most ``limit`` replicas of this node starting at once, in arrival order.

    Attributes:
        limit: slots (starts at once).
        hold_max_s: longest a start waits for its agent's registration, seconds.
    """

    def __init__(self, limit: int | None = None, *, hold_max_s: float = HOLD_MAX_S) -> None:
        self.limit = limit or default_limit()
        self.hold_max_s = hold_max_s
        self._slots = asyncio.Semaphore(self.limit)
        self.waiting = 0
        """Starts queued for a slot now (for status and tests)."""

    async def acquire(self) -> Slot:
        """Wait for a free slot (FIFO); give it back with ``Slot.release``."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        return Slot(self._slots)

    async def until_up(
        self,
        issued_at: datetime,
        lookup: Callable[[], AgentInfo | None],
        ended: Callable[[], bool],
    ) -> bool:
        """Wait until the instance started at ``issued_at`` registered (True) or not.

        Polls ``lookup()`` (the replica's current registry entry) until it shows an
        agent started at or after ``issued_at`` (True), ``ended()`` is true or
        ``hold_max_s`` passed (False).
        """
        deadline = time.monotonic() + self.hold_max_s
        while True:
            info = lookup()
            if info is not None and info.started_at >= issued_at:
                return True
            if ended() or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
