"""Fencing: a supervisor cut off from the bus stops its replicas before it is declared lost.

The supervisor's node entry in KV ``<p>_nodes`` lives ``REGISTRY_TTL_S`` after its last
heartbeat put. Once it expires, the scheduler places the node's replicas on other
nodes, which start them. A supervisor that cannot put its heartbeat (the connection
is gone, or its nats-server sits in a minority partition where puts time out for
want of quorum) cannot tell whether that has happened, so it assumes it will: when no
heartbeat put has succeeded for ``fence_after_s``, it *fences* itself: it stops every
replica (``FENCE_STOP_GRACE_S``: they cannot report their tasks anyway; the tasks are
redelivered elsewhere when their leases lapse) and starts none until it is unfenced.
After a partition heals there are thus never two live replicas of one identity.

It keeps trying to heartbeat. Once a put succeeds it *unfences*: if its entry was no
longer its own last write (it expired, or was deleted, meanwhile), it first gives the
scheduler ``rejoin_settle_s`` to move its replicas; then it starts its placement and
deployment watches over and waits for their replays (``KvMirror.resync``, at most
``RESYNC_TIMEOUT_S``, then again on the next beat), so that it never starts a replica
from a view of the placements older than the partition's end.

Timing (``FenceTiming``): measured from the end of the last successful put (``t``),
the entry expires no earlier than ``t + REGISTRY_TTL_S`` (the server stored it before
acknowledging). The replicas are gone by ``t + fence_after_s + FENCE_STOP_GRACE_S``
plus the time to notice (within ``heartbeat_timeout_s``: the fence check runs on its
own timer, not after a pending put). ``check_timing`` demands that this be strictly
less than ``REGISTRY_TTL_S``. The default ``fence_after_s`` leaves, besides those two,
a margin of one heartbeat interval (at least 1 s) for a busy event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from loguru import logger

from agentbus.bus import Bus
from agentbus.bus.contract import REGISTRY_TTL_S
from agentbus.kv.mirror import KvMirror
from agentbus.messages import NodeEvent, utcnow
from agentbus_supervisor.metrics import SupervisorMetrics

FENCE_STOP_GRACE_S = 1.0
"""SIGTERM-to-SIGKILL grace of the replicas a fence stops."""
RESYNC_TIMEOUT_S = 15.0
"""Bound of the replays an unfencing waits for; past it, the next successful heartbeat
asks for new ones (each ask restarts the watches), so a watch that stopped making
progress cannot keep the node fenced."""


@dataclass(frozen=True)
class FenceTiming:
    """The fence's clock settings, all in seconds (see the module docstring).

    Attributes:
        fence_after_s: no successful heartbeat put for longer than this: fence.
        heartbeat_timeout_s: bound of one heartbeat put.
        rejoin_settle_s: after a put that found the node's entry gone, how long to
            leave the scheduler to move the node's replicas before reading placements.
    """

    fence_after_s: float
    heartbeat_timeout_s: float
    rejoin_settle_s: float


def check_timing(
    heartbeat_s: float, fence_after_s: float | None, heartbeat_timeout_s: float | None
) -> FenceTiming:
    """The effective timing of these settings (defaults filled in), checked.

    Defaults: ``heartbeat_timeout_s`` = ``0.75 * heartbeat_s`` (a put gets less than one
    interval, so the next beat is never held up for long); ``fence_after_s`` =
    ``REGISTRY_TTL_S - heartbeat_timeout_s - FENCE_STOP_GRACE_S - max(heartbeat_s, 1)``
    (5.5 s with the default 2 s heartbeat).

    Raises:
        ValueError: the replicas would not be gone strictly before the node entry can
            expire (``fence_after_s + heartbeat_timeout_s + FENCE_STOP_GRACE_S >=
            REGISTRY_TTL_S``), or ``fence_after_s`` is not positive.
    """
    timeout_s = heartbeat_timeout_s if heartbeat_timeout_s is not None else 0.75 * heartbeat_s
    margin_s = max(heartbeat_s, 1.0)
    default_s = REGISTRY_TTL_S - timeout_s - FENCE_STOP_GRACE_S - margin_s
    after_s = fence_after_s if fence_after_s is not None else default_s
    if after_s <= 0:
        raise ValueError(
            f"fence_after_s must be > 0 (is {after_s:g}): heartbeat_s {heartbeat_s:g} is "
            f"too long for the node entry's TTL ({REGISTRY_TTL_S:g} s)"
        )
    done_s = after_s + timeout_s + FENCE_STOP_GRACE_S
    if done_s >= REGISTRY_TTL_S:
        raise ValueError(
            f"fencing would end too late: fence_after_s {after_s:g} + heartbeat_timeout_s "
            f"{timeout_s:g} + stop grace {FENCE_STOP_GRACE_S:g} = {done_s:g} s is not less "
            f"than the node entry's TTL ({REGISTRY_TTL_S:g} s): the scheduler could start "
            "this node's replicas elsewhere while they still run here"
        )
    return FenceTiming(after_s, timeout_s, rejoin_settle_s=max(2 * heartbeat_s, 1.0))


@dataclass
class FenceClock:
    """When the last heartbeat put succeeded, and whether that is too long ago.

    Times are the caller's monotonic clock, in seconds (``loop.time()``).
    """

    fence_after_s: float
    last_beat: float

    def beat(self, now: float) -> None:
        """A heartbeat put succeeded at ``now``."""
        self.last_beat = max(self.last_beat, now)

    def silent_s(self, now: float) -> float:
        """Seconds since the last successful put."""
        return now - self.last_beat

    def cut_off(self, now: float) -> bool:
        """Whether no put has succeeded for longer than ``fence_after_s``."""
        return self.silent_s(now) > self.fence_after_s

    def until_cut_off_s(self, now: float) -> float:
        """Seconds until ``cut_off`` turns true without a beat (0 if it is)."""
        return max(self.fence_after_s - self.silent_s(now), 0.0)


@dataclass
class Fence:
    """The fence of one supervisor: ``run`` fences, ``beat`` leads to unfencing.

    ``on_fence`` must stop every replica at once; ``on_unfence`` resumes reconciling.
    ``mirrors``: the watches to start over (and wait for) before unfencing.
    """

    bus: Bus
    node_id: str
    timing: FenceTiming
    metrics: SupervisorMetrics
    mirrors: Sequence[KvMirror[Any]]
    on_fence: Callable[[], None]
    on_unfence: Callable[[], None]
    clock: FenceClock = field(init=False)
    fenced: bool = False
    fenced_at: datetime | None = None
    silent_s: float = 0.0
    """How long the heartbeat had failed when the fence went up."""
    _unfencing: asyncio.Task[None] | None = None
    _entry_lost: bool = False  # a beat while fenced found the entry gone
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.clock = FenceClock(self.timing.fence_after_s, last_beat=0.0)  # ``run`` starts it

    def beat(self, *, entry_lost: bool) -> None:
        """A heartbeat put succeeded; ``entry_lost``: it did not replace our last write."""
        self.clock.beat(_now())
        self._entry_lost = self.fenced and (self._entry_lost or entry_lost)  # until unfenced
        if self.fenced and (self._unfencing is None or self._unfencing.done()):
            self._unfencing = asyncio.create_task(self._unfence(self._entry_lost))

    async def run(self, stop: asyncio.Event) -> None:
        """Fence when the heartbeat has failed too long, until ``stop`` is set."""
        self.clock.beat(_now())
        try:
            while not stop.is_set():
                now = _now()
                if not self.fenced and self.clock.cut_off(now):
                    self._fence(now)
                wait_s = None if self.fenced else self.clock.until_cut_off_s(now)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_either(stop, self._changed), wait_s)
        finally:
            if self._unfencing is not None:
                self._unfencing.cancel()
                await asyncio.gather(self._unfencing, return_exceptions=True)

    def _fence(self, now: float) -> None:
        self.fenced, self.fenced_at = True, utcnow()
        self.silent_s = self.clock.silent_s(now)
        self.metrics.fenced.set(1)
        self.metrics.fences.inc()
        logger.error(
            "no heartbeat put succeeded for too long: fenced, stopping every replica",
            node_id=self.node_id,
            silent_s=round(self.silent_s, 2),
            fence_after_s=self.timing.fence_after_s,
        )
        self.on_fence()

    async def _unfence(self, entry_lost: bool) -> None:
        logger.info("heartbeat put succeeded while fenced", entry_lost=entry_lost)
        if entry_lost:  # leave the scheduler time to move this node's replicas
            await asyncio.sleep(self.timing.rejoin_settle_s)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(m.resync() for m in self.mirrors)), RESYNC_TIMEOUT_S
            )
        except TimeoutError:  # the next successful beat asks again (the watches restart)
            logger.warning(
                "placements not replayed in time: still fenced",
                node_id=self.node_id,
                timeout_s=RESYNC_TIMEOUT_S,
            )
            return
        if self.clock.cut_off(_now()):
            return  # cut off again meanwhile; the next successful beat tries again
        self.fenced, self._entry_lost = False, False
        self.metrics.fenced.set(0)
        logger.warning("unfenced: reconciling from fresh placements", node_id=self.node_id)
        self._changed.set()
        self.on_unfence()
        reason = f"no heartbeat put for {self.silent_s:.1f} s"
        await self._event("fenced", self.fenced_at or utcnow(), reason)
        await self._event("unfenced", utcnow(), "lost entry" if entry_lost else "")

    async def _event(self, kind: Literal["fenced", "unfenced"], at: datetime, reason: str) -> None:
        event = NodeEvent(node_id=self.node_id, kind=kind, at=at, reason=reason)
        try:
            await self.bus.publish_event("node", kind, event)
        except Exception as exc:  # best effort
            logger.warning("node event not published", kind=kind, error=repr(exc))


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
