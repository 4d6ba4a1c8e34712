"""Telling a KV watch that stopped delivering from one with nothing to deliver.

nats-py's KV watch is an ordered push consumer that nats-py re-creates in the
background when its idle heartbeats stop; if that re-creation keeps failing (a cluster
electing leaders after a partition heals, or the server holding the consumer killed)
its activity check can end, and the watch then stays silent on a connection that is
up: nothing says it is dead. ``WatchLiveness`` asks the bucket's stream for the first
message after the last one the watch delivered (a message get with
``next_by_subj``, answered by the stream's leader): one there on two checks in a row
with nothing delivered in between, the watch is dead and its owner starts a new one
(``agentbus.kv.mirror``). Neither the stream's last sequence nor the watch's consumer
is asked: the last sequence stays where it was when the stream's last message expired
(a TTL, a limit marker), which a watch started afterwards never receives; and the
consumer of a watch whose server died answers nobody.

An idle watch checks every ``STALE_CHECK_S``; one found behind is checked again after
``BEHIND_RECHECK_S``, so a dead watch is noticed within about both, not twice the first
(a supervisor waiting for the placements of a dead host's replicas sees them sooner).
"""

from __future__ import annotations

import time

import nats.errors
import nats.js.errors

from agentbus.bus import Bus

STALE_CHECK_S = 5.0
"""How often (s) an idle watch looks for messages it has not delivered."""
BEHIND_RECHECK_S = 2.0
"""When (s) a watch found behind is checked again."""


class WatchLiveness:
    """Progress of one watch of ``bucket`` against its stream (one per watch).

    ``saw`` each delivered entry's revision (its stream sequence); ``stale`` while the
    watch is idle (``every_s``: ``STALE_CHECK_S`` by default). A check the stream does
    not answer says nothing (not stale): a watch is restarted on evidence only.
    """

    def __init__(self, bus: Bus, bucket: str, *, every_s: float | None = None) -> None:
        self.bus = bus
        self.stream = f"KV_{bucket}"
        self.subjects = f"$KV.{bucket}.>"
        self.every_s = STALE_CHECK_S if every_s is None else every_s
        self.delivered_seq = 0
        self._next_check = time.monotonic() + self.every_s
        self._behind_at: int | None = None  # delivered_seq at a check that found it behind

    def saw(self, revision: int | None) -> None:
        """Note an entry the watch delivered (``revision``: its stream sequence)."""
        if revision and revision > self.delivered_seq:
            self.delivered_seq = revision

    async def stale(self) -> bool:
        """Whether the watch is dead (checked at most every ``every_s``).

        Dead: a message after the last delivered one exists at two checks in a row,
        nothing delivered in between; the check after one that found it behind comes
        after ``BEHIND_RECHECK_S``.
        """
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.every_s
        try:
            await self.bus.js.get_msg(
                self.stream, seq=self.delivered_seq + 1, subject=self.subjects, next=True
            )
            behind = True
        except nats.js.errors.NotFoundError:
            behind = False
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        if not behind:
            self._behind_at = None
            return False
        if self._behind_at == self.delivered_seq:
            return True
        self._behind_at = self.delivered_seq
        self._next_check = now + min(self.every_s, BEHIND_RECHECK_S)
        return False
