"""The agent's task intake: priority bands, free slots, ready notices.

Each capability has one work-queue subject and durable consumer per priority band
(``Names.task_subject``/``task_consumer``; band = the task's ``priority``, 0..9).
JetStream delivers a consumer's messages in stream order and knows nothing of
priorities, so the order between bands is decided here, by what is pulled first:

* Only free slots are ever pulled for, with **no-wait** pull requests (``{"batch": n,
  "no_wait": true}``, n ≤ free): the server answers at once, no request stays open, so
  no band delivers into a slot another band filled (open long polls on several bands
  would over-deliver past ``max_concurrency``).
* Bands are pulled high to low; among capabilities with the same band, round-robin.
* A band is pulled only while it may hold tasks ("flagged"). Every band starts
  flagged; then a band is flagged by a ``TasksReady`` notice (``agentbus.bus.notices``:
  the one agent of the queue group that heard it), a backlog notice (no agent had a
  free slot), a retry of this agent falling due, a task another agent returned at once
  (``returned``), for band 0 a slot freeing after the agent was full, or a rescan:
  how many messages each band's subject holds (``NoWaitPuller.subject_counts``;
  redeliveries after a lapsed lease come unannounced), every ``rescan_s`` while work
  is about, backing off to ``rescan_max_s`` while the subjects stay empty (a reconnect
  snaps it back; ``agentbus.runtime.rescan``). A pull clears the flag unless tasks are
  owed to it (notices heard and not yet served) or it filled every free slot and left
  tasks in the band (``num_pending`` of the last message).
* A notice for ``count`` tasks makes the agent pull up to ``min(count, free)`` (the
  other tasks of a burst are other agents' to take: their notices woke them); what it
  cannot take — it was full when the notice came, or became full — it announces again
  for another agent. While full it is out of the queue group.

Idle → running costs one notice and one pull round trip. The scheduler sends a lone
task's notice before the stream acknowledged the task (``agentbus_scheduler.tasks.ready``),
so the pull for a notice carries ``expires`` = ``NOTICE_WAIT_S`` as well as ``no_wait``:
the server waits that long for the first message at most. A pull for a notice that
finds nothing writes the notice off. The first pull after a backlog notice waits the
same way; other pulls wait for nothing.

A pull answered "no such consumer" (the consumer or the whole stream was deleted under
the running agent) starts a ``Rebinder`` episode for its capability (``agentbus.runtime.rebind``):
nothing of that capability is pulled until its consumers are bound again, then every
band of it is flagged; notices owed to it stay owed.

Pull requests and their answers: ``agentbus.bus.pulls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from loguru import logger
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.bus.notices import Announcer, ReadyListener
from agentbus.bus.pulls import NoWaitPuller, Pulled, nak_quietly
from agentbus.messages import TasksReady
from agentbus.names import BANDS, Names
from agentbus.runtime.rebind import Rebinder
from agentbus.runtime.rescan import RescanClock, probe_bands

NOTICE_WAIT_S = 0.02
"""How long a pull for a notice may wait for the task to be stored."""


@dataclass(frozen=True, slots=True, order=True)
class Lane:
    """One (band, capability) pair: a consumer to pull from. Orders by band first."""

    band: int
    capability: str


class Intake:
    """Pulls tasks into free slots, highest band first, until stopped.

    ``dispatch(capability, msg)`` is called for every message pulled; the caller owns
    the slot until it calls ``release()``. ``rebinder`` binds a capability's consumers
    again when a pull finds them gone (without one, that is only logged). Counters
    ``pulls`` and ``passed_on`` are for tests and metrics.
    """

    def __init__(
        self,
        bus: Bus,
        capabilities: Iterable[str],
        *,
        max_concurrency: int,
        rescan_s: float,
        rescan_max_s: float | None = None,
        pull_timeout_s: float,
        dispatch: Callable[[str, Msg], None],
        on_bad: Callable[[str, str], Awaitable[None]] | None = None,
        rebinder: Rebinder | None = None,
    ) -> None:
        self._names: Names = bus.names
        self._nc = bus.nc
        self._reconnects = bus.nc.stats["reconnects"]
        self._rebinder = rebinder
        self.capabilities = list(capabilities)
        self.max_concurrency = max_concurrency
        self.rescan = RescanClock(rescan_s, rescan_max_s or rescan_s, time.monotonic())
        """When the next rescan is due (``agentbus.runtime.rescan``)."""
        self._dispatch = dispatch
        self._puller = NoWaitPuller(
            bus, bus.names.tasks_stream, timeout_s=pull_timeout_s, late=self._late
        )
        self._announcer = Announcer(bus)
        self._ears = ReadyListener(bus, self.capabilities, heard=self._heard, on_bad=on_bad)
        self._lanes = [Lane(b, c) for b in range(BANDS) for c in self.capabilities]
        self._flagged: set[Lane] = set(self._lanes)
        self._owed: dict[Lane, int] = dict.fromkeys(self._lanes, 0)  # tasks notices told of
        self._announced: set[Lane] = set()  # a backlog notice came: the next pull may wait
        self._turn = 0
        self._changed = asyncio.Event()
        self._stopping = False
        self._timers: dict[asyncio.TimerHandle, Lane] = {}  # wake_later's, by lane
        self._passing: set[asyncio.Task[None]] = set()
        self._parked: deque[asyncio.Future[None]] = deque()  # parked tasks taking back a slot
        self.busy = 0
        """Slots in use: messages dispatched and not yet released."""
        self.pulls = 0
        """Pull requests sent."""
        self.passed_on = 0
        """Notices announced again for another agent (this one had no slot for them)."""
        self.probes = 0
        """Rescans' stream-info requests answered."""

    # -- wiring ------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the notice replies, the pull inbox and the backlog notices."""
        await self._announcer.start()
        await self._puller.start()
        await self._ears.start()

    def stop(self) -> None:
        """Make ``run()`` return after the pull in progress (if any); hear no more."""
        self._stopping = True
        self._ears.withdraw()
        self._changed.set()

    async def close(self) -> None:
        """Unsubscribe everything (after ``run()`` returned), passing on owed notices.

        Notices heard and not yet pulled for, and those still on their way through the
        queue groups, are announced again for another agent.
        """
        for timer, lane in self._timers.items():  # their tasks come back unannounced
            timer.cancel()
            self._pass_on(lane.capability, lane.band, 0)
        self._timers.clear()
        self._pass_on_owed()
        if self._rebinder is not None:
            await self._rebinder.close()
        await self._ears.close()
        await asyncio.gather(*self._passing, return_exceptions=True)
        await self._announcer.close()
        await self._puller.stop()

    @property
    def listening(self) -> bool:
        """Whether the agent is in the notices' queue groups (it has a free slot)."""
        return self._ears.listening

    def release(self) -> None:
        """A dispatched message's slot is free again (first for a parked task's return)."""
        while self._parked:
            waiter = self._parked.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it: ``busy`` stays
                return
        self.busy -= 1
        self._changed.set()

    def lend(self) -> None:
        """A running task parks (waits for an approval): its slot is free meanwhile."""
        self.release()

    async def take_back(self) -> None:
        """A parked task resumes: wait for a free slot and take it.

        Parked tasks come back before new pulls. Cancelled while waiting, it takes a
        slot anyway (``busy`` may pass ``max_concurrency`` until it is released): the
        caller owns one either way.
        """
        if self.busy < self.max_concurrency and not self._parked:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._parked.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not (waiter.done() and not waiter.cancelled()):
                with contextlib.suppress(ValueError):
                    self._parked.remove(waiter)
                self.busy += 1
            raise

    def wake(self, capability: str, band: int, count: int = 0) -> None:
        """Flag ``band`` of ``capability`` as possibly holding tasks, now.

        ``count`` > 0: that many tasks are owed to this agent (a notice said so; they
        may not be stored yet): the pull asks for at most that many and may wait
        ``NOTICE_WAIT_S`` for the first.
        """
        lane = Lane(band, capability)
        if lane in self._owed:
            self.rescan.stir(time.monotonic())
            self._owed[lane] += count
            self._flagged.add(lane)
            self._changed.set()

    def wake_later(self, capability: str, band: int, delay_s: float) -> None:
        """Wake a band after ``delay_s`` (e.g. when a task nak'd with that delay returns).

        Nobody announces such a redelivery: if this agent has no free slot then, it
        announces the task for another agent.
        """
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.pop(timer, None)
            notice = TasksReady(capability=capability, band=band)
            self._heard(notice, False)

        timer = loop.call_later(max(delay_s, 0.0), fire)
        self._timers[timer] = Lane(band, capability)

    def returned(self, capability: str, band: int) -> None:
        """A task this agent pulled went back to the stream at once (nak'd, no delay).

        Nobody announces it: this agent takes it again if it has a free slot and is not
        stopping, else it announces it for another agent (agents that found nothing for
        a while rescan rarely, ``agentbus.runtime.rescan``).
        """
        self._heard(TasksReady(capability=capability, band=band, count=1), False)

    def flagged(self, capability: str) -> list[int]:
        """Bands of ``capability`` that may hold tasks, high to low (for tests, metrics)."""
        return sorted(
            (ln.band for ln in self._flagged if ln.capability == capability), reverse=True
        )

    def _heard(self, notice: TasksReady, backlog: bool) -> None:
        if backlog:  # every agent hears it: mark the band, take what a free slot can
            self.wake(notice.capability, notice.band)
            self._announced.add(Lane(notice.band, notice.capability))
        elif self._stopping or self.busy >= self.max_concurrency:
            self._pass_on(notice.capability, notice.band, notice.count)
        else:
            self.wake(notice.capability, notice.band, notice.count)

    def _pass_on(self, capability: str, band: int, count: int) -> None:
        self.passed_on += 1
        task = asyncio.create_task(self._announcer.announce(capability, band, count))
        self._passing.add(task)
        task.add_done_callback(self._passing.discard)

    def _pass_on_owed(self) -> None:
        """No free slot: hand the tasks notices told this agent of to another one."""
        for lane, owed in self._owed.items():
            if owed:
                self._owed[lane] = 0
                self._flagged.discard(lane)
                self._pass_on(lane.capability, lane.band, owed)

    async def _late(self, msg: Msg) -> None:
        rest = msg.subject.removeprefix(f"{self._names.prefix}.tasks.")
        capability = rest.split(".", 1)[0]
        if capability in self.capabilities and self.busy < self.max_concurrency:
            self.busy += 1
            self.rescan.stir(time.monotonic())
            self._dispatch(capability, msg)
            self._changed.set()
            return
        logger.warning("late task delivery returned: no free slot", subject=msg.subject)
        await nak_quietly(msg)
        if capability in self.capabilities:  # <capability> (band 0) or <capability>.p<N>
            tail = rest[len(capability) + 1 :].removeprefix("p")
            self.returned(capability, int(tail) if tail.isdigit() else 0)

    # -- the loop ----------------------------------------------------------------------
    def _next_lane(self) -> Lane | None:
        flagged = self._flagged
        if self._rebinder is not None:  # a capability being bound again is not pulled
            flagged = {ln for ln in flagged if not self._rebinder.rebinding(ln.capability)}
        if not flagged:
            return None
        top = max(lane.band for lane in flagged)
        n = len(self.capabilities)
        candidates = [lane for lane in flagged if lane.band == top]
        return min(
            candidates, key=lambda ln: (self.capabilities.index(ln.capability) - self._turn) % n
        )

    async def _listen(self, free: int) -> None:
        """In the queue groups exactly while a slot is free."""
        if free <= 0:
            self._ears.withdraw()
            self._pass_on_owed()
        elif await self._ears.offer():
            # it was out of the groups: a notice may have found nobody (the backlog
            # notice covers that, rate limited; band 0, the common one, is cheap to check)
            self._flagged.update(Lane(0, c) for c in self.capabilities)

    async def _rescan(self) -> bool:
        """Flag every band whose subject holds messages (``probe_bands``); whether none does."""
        empty = True
        for capability in self.capabilities:
            bands = await probe_bands(self._puller, self._names, capability)
            if bands is None:  # connection trouble: pull them all
                bands = set(range(BANDS))
            else:
                self.probes += 1
            self._flagged.update(Lane(b, capability) for b in bands)
            empty = empty and not bands
        return empty

    def _settle(self, lane: Lane, owed: int, ask: int, pulled: Pulled, free: int) -> None:
        """Book a pull of ``lane`` that asked for ``ask`` with ``owed`` tasks owed.

        What it got pays only for the ``owed`` notices heard before it was sent: a
        notice heard during the pull may announce a task the server had not stored when
        it answered (the scheduler announces a lone task before the stream's ack), so it
        stays owed and is pulled for next (docs/architecture.md, "Which notices a pull pays for").
        """
        got = len(pulled.msgs)
        paid = owed if got == 0 and pulled.ended else min(got, owed)  # empty: written off
        left = max(self._owed[lane] - paid, 0)
        self._owed[lane] = left
        more = got == ask == free and pulled.msgs[-1].metadata.num_pending > 0
        if not (left or more):  # an unanswered pull's messages come late (``_late``)
            self._flagged.discard(lane)

    def _unbound(self, lane: Lane, consumer: str, pulled: Pulled) -> None:
        """``consumer`` is gone: bind the capability again; its notices stay owed."""
        if self._rebinder is not None:
            self._rebinder.lost(lane.capability, consumer, pulled.status, self._rebound)
            return
        self._flagged.discard(lane)
        logger.warning("task consumer gone", consumer=consumer, status=pulled.status)

    def _rebound(self, capability: str) -> None:
        self.rescan.stir(time.monotonic())
        self._flagged.update(Lane(b, capability) for b in range(BANDS))
        self._changed.set()

    async def run(self) -> None:
        """Pull into free slots until ``stop()``; returns after the pull in progress."""
        clock = self.rescan
        while not self._stopping:
            self._changed.clear()
            free = self.max_concurrency - self.busy
            await self._listen(free)
            now = time.monotonic()
            if self._nc.stats["reconnects"] != self._reconnects:  # notices may be lost
                self._reconnects = self._nc.stats["reconnects"]
                clock.stir(now)
            if now >= clock.due and free > 0:
                empty = await self._rescan()
                clock.scanned(time.monotonic(), empty=empty)
            lane = self._next_lane() if free > 0 else None
            if lane is None:  # every slot busy, or nothing to pull: wait for a change
                timeout = max(clock.due - time.monotonic(), 0.0) if free > 0 else None
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            owed = self._owed[lane]
            ask = min(owed, free) if owed else free
            consumer = self._names.task_consumer(lane.capability, lane.band)
            announced = lane in self._announced  # a notice's task may not be stored yet
            self._announced.discard(lane)
            try:
                pulled = await self._puller.pull(
                    consumer, ask, wait_s=NOTICE_WAIT_S if owed or announced else 0.0
                )
            except Exception as exc:  # connection lost: nats-py reconnects by itself
                logger.warning("pull failed", capability=lane.capability, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            self.pulls += 1
            self._turn += 1
            if pulled.unbound:
                self._unbound(lane, consumer, pulled)
                continue
            self._settle(lane, owed, ask, pulled, free)
            if pulled.msgs:
                clock.stir(time.monotonic())
            for msg in pulled.msgs:
                self.busy += 1
                self._dispatch(lane.capability, msg)
