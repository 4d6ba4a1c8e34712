"""Telling a KV watch that stopped delivering from one with nothing to deliver.

nats-py's KV watch is an ordered push consumer that nats-py re-creates in the
background when its idle heartbeats stop; if that re-creation keeps failing (a cluster
electing leaders after a partition heals, or the server holding the consumer killed)
its activity check can end, and the watch then stays silent on a connection that is
up: nothing says it is dead. ``WatchLiveness`` asks the server about the watch's own
consumer: gone, or holding messages it has not delivered (``num_pending``), on two
checks in a row with nothing delivered in between, the watch is dead and its owner
starts a new one (``agentbus.kv.mirror``). The consumer is asked, not the stream: a
stream's last sequence stays where it was when its last message expired (a TTL, a
limit marker), which a watch started afterwards never receives.

An idle watch checks every ``STALE_CHECK_S``; one found behind is checked again after
``BEHIND_RECHECK_S``, so a dead watch is noticed within about both, not twice the first
(a supervisor waiting for the placements of a dead host's replicas sees them sooner).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerInfo

STALE_CHECK_S = 5.0
"""How often (s) an idle watch asks about its consumer."""
BEHIND_RECHECK_S = 2.0
"""When (s) a watch found behind is checked again."""


class WatchLiveness:
    """Progress of one watch (one per watch).

    ``consumer_info``: the watch's consumer as the server has it (nats-py's
    ``watcher._sub.consumer_info``, which follows nats-py's own re-creations). ``saw``
    each delivered entry's revision; ``stale`` while the watch is idle (``every_s``:
    ``STALE_CHECK_S`` by default). A check the
    server does not answer says nothing (not stale): a watch is restarted on evidence
    only.
    """

    def __init__(
        self,
        consumer_info: Callable[[], Awaitable[ConsumerInfo]],
        *,
        every_s: float | None = None,
    ) -> None:
        self._consumer_info = consumer_info
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

        Dead: its consumer gone or with messages pending at two checks in a row, nothing
        delivered in between; the check after one that found it behind comes after
        ``BEHIND_RECHECK_S``.
        """
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.every_s
        try:
            behind = ((await self._consumer_info()).num_pending or 0) > 0
        except nats.js.errors.NotFoundError:
            behind = True  # gone with its server, or never re-created
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
