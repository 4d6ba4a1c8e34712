"""The agent's task intake: priority bands, free slots, ready notices.

Each capability has one work-queue subject and durable consumer per priority band
(``Names.task_subject``/``task_consumer``; band = the task's ``priority``, 0..9).
JetStream delivers a consumer's messages in stream order and knows nothing of
priorities, so the order between bands is decided here, by what is pulled first:

* Only free slots are ever pulled for (``max_concurrency`` minus tasks in hand), with
  **no-wait** pull requests (``{"batch": free, "no_wait": true}``): the server answers
  at once with what it has, so no request stays open and no band can deliver into a
  slot that another band already filled. Holding long-poll requests open on several
  bands would over-deliver past ``max_concurrency`` when they fill at the same time.
* Bands are pulled high to low; among capabilities with the same band, round-robin.
* A band is pulled only while it may hold tasks: every (capability, band) starts
  "flagged"; a pull that comes back short clears the flag unless a notice arrived
  meanwhile. When nothing is flagged the loop sleeps until the scheduler's
  ``TasksReady`` notice on ``<p>.control.ready.<capability>`` flags a band, a slot
  frees, or ``rescan_s`` passes (then every band is flagged again: redeliveries after
  a nak delay or a lapsed lease come without a notice).

Idle → running therefore costs one notice and one pull round trip. The scheduler
sends the notice right behind the task's publish, before the stream acknowledged it
(``agentbus_scheduler.ready``), so the pull that follows a notice may reach the server
before the task is stored: that pull carries ``expires`` = ``NOTICE_WAIT_S`` as well
as ``no_wait``, and the server then waits up to that long for the first message but
ends the request as soon as it delivered what it has. Pulls after a rescan or a
freed slot wait for nothing.

Pull protocol details (nats-server 2.15, checked in a probe): a no-wait request is
answered with up to ``batch`` messages; when fewer were available a status message
``404 No Messages`` ends the reply; when exactly ``batch`` were delivered, no status
follows. With ``expires`` too, an empty consumer holds the request until the first
message (then ``404`` right after what it had) or until ``expires`` (``408``).
Pulled messages arrive with their stream subject, not the inbox, so one pull is
outstanding at a time per agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.bus import Bus
from agentbus.messages import TasksReady
from agentbus.names import BANDS, Names

_decode_ready = msgspec.json.Decoder(TasksReady).decode
NOTICE_WAIT_S = 0.02
"""How long a pull that follows a ready notice may wait for the task to be stored."""


@dataclass(frozen=True, slots=True, order=True)
class Lane:
    """One (band, capability) pair: a consumer to pull from. Orders by band first."""

    band: int
    capability: str


class NoWaitPuller:
    """No-wait pull requests on the durable consumers of one stream, one at a time.

    Each request has its own reply subject ``<inbox>.<n>``, so the status that ends a
    request is never taken for the end of a later one. Pulled messages carry their
    stream subject, so a message that arrives after its request was given up (no
    answer within the timeout, e.g. under a reconnect) goes to ``late`` (the intake
    runs it if a slot is free) or, without one, is returned with a nak.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        *,
        timeout_s: float,
        late: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> None:
        self._nc = bus.nc
        self._stream = stream
        self._timeout_s = timeout_s
        self._late = late
        self._sub: Subscription | None = None
        self._inbox = ""
        self._reply = ""
        self._requests = 0
        self._want = 0
        self._got: list[Msg] = []
        self._ended: asyncio.Event = asyncio.Event()

    async def start(self) -> None:
        """Subscribe to the reply inboxes; idempotent."""
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe (a message still in flight is redelivered after its lease)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # closed connection: nothing to undo
                logger.debug("puller unsubscribe failed", error=repr(exc))

    async def pull(self, consumer: str, batch: int, *, wait_s: float = 0.0) -> list[Msg]:
        """Up to ``batch`` messages that ``consumer`` has ready (maybe none).

        With ``wait_s`` > 0, an empty consumer may take up to ``wait_s`` seconds to
        deliver its first message; the request still ends as soon as it delivered
        what it had.

        Raises:
            nats.errors.Error: the request could not be sent.
        """
        await self.start()
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want, self._got = batch, []
        self._ended.clear()
        body: dict[str, int | bool] = {"batch": batch, "no_wait": True}
        if wait_s > 0:
            body["expires"] = int(wait_s * 1e9)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        await self._nc.publish(subject, json.dumps(body).encode(), reply=self._reply)
        try:
            await asyncio.wait_for(self._ended.wait(), self._timeout_s + wait_s)
        except TimeoutError:  # no answer (reconnecting): take what came
            logger.debug("no-wait pull unanswered", consumer=consumer)
        got, self._got, self._want, self._reply = self._got, [], 0, ""
        return got

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            # 404/408/409 end the request they answer; 100 is a heartbeat
            if status != "100" and msg.subject == self._reply:
                self._ended.set()
            return
        if len(self._got) < self._want:
            self._got.append(msg)
            if len(self._got) == self._want:
                self._ended.set()
            return
        # the answer to a request given up on: run it if a slot is free, else give it back
        if self._late is not None:
            await self._late(msg)
            return
        logger.warning("late task delivery returned", subject=msg.subject)
        try:
            await msg.nak()
        except Exception as exc:
            logger.debug("nak failed", error=repr(exc))


class Intake:
    """Pulls tasks into free slots, highest band first, until stopped.

    ``dispatch(capability, msg)`` is called for every message pulled; the caller owns
    the slot until it calls ``release()``.
    """

    def __init__(
        self,
        bus: Bus,
        capabilities: Iterable[str],
        *,
        max_concurrency: int,
        rescan_s: float,
        pull_timeout_s: float,
        dispatch: Callable[[str, Msg], None],
        on_bad: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._bus = bus
        self._on_bad = on_bad  # (subject, reason) of a notice that does not decode
        self._names: Names = bus.names
        self.capabilities = list(capabilities)
        self.max_concurrency = max_concurrency
        self.rescan_s = rescan_s
        self._dispatch = dispatch
        self._puller = NoWaitPuller(
            bus, bus.names.tasks_stream, timeout_s=pull_timeout_s, late=self._late
        )
        self._lanes = [Lane(b, c) for b in range(BANDS) for c in self.capabilities]
        self._flagged: set[Lane] = set(self._lanes)
        self._notices: dict[Lane, int] = dict.fromkeys(self._lanes, 0)
        self._fresh: set[Lane] = set()  # a notice came since the lane's last pull
        self._turn = 0
        self._changed = asyncio.Event()
        self._stopping = False
        self._subs: list[Subscription] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self.busy = 0
        """Slots in use: messages dispatched and not yet released."""

    # -- wiring ------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the ready notices of every capability and the pull inbox."""
        await self._puller.start()
        for capability in self.capabilities:
            sub = await self._bus.nc.subscribe(
                self._names.ready_subject(capability), cb=self._on_ready
            )
            self._subs.append(sub)

    def stop(self) -> None:
        """Make ``run()`` return after the pull in progress (if any)."""
        self._stopping = True
        self._changed.set()

    async def close(self) -> None:
        """Unsubscribe everything (after ``run()`` returned)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                logger.debug("unsubscribe failed", error=repr(exc))
        self._subs.clear()
        await self._puller.stop()

    def release(self) -> None:
        """A dispatched message's slot is free again."""
        self.busy -= 1
        self._changed.set()

    def wake(self, capability: str, band: int, *, notice: bool = False) -> None:
        """Flag ``band`` of ``capability`` as possibly holding tasks, now.

        ``notice``: a ready notice says so (the task may not be stored yet).
        """
        lane = Lane(band, capability)
        if lane in self._notices:
            self._notices[lane] += 1
            self._flagged.add(lane)
            if notice:
                self._fresh.add(lane)
            self._changed.set()

    def wake_later(self, capability: str, band: int, delay_s: float) -> None:
        """Flag a band after ``delay_s`` (e.g. when a task nak'd with that delay returns)."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self.wake(capability, band)

        timer = loop.call_later(max(delay_s, 0.0), fire)
        self._timers.add(timer)

    def flagged(self, capability: str) -> list[int]:
        """Bands of ``capability`` that may hold tasks, high to low (for tests, metrics)."""
        return sorted((ln.band for ln in self._flagged if ln.capability == capability),
                      reverse=True)  # fmt: skip

    async def _on_ready(self, msg: Msg) -> None:
        try:
            notice = _decode_ready(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.debug("bad ready notice ignored", subject=msg.subject)
            if self._on_bad is not None:
                await self._on_bad(msg.subject, f"not a TasksReady: {exc}")
            return
        self.wake(notice.capability, notice.band, notice=True)

    async def _late(self, msg: Msg) -> None:
        rest = msg.subject.removeprefix(f"{self._names.prefix}.tasks.")
        capability = rest.split(".", 1)[0]
        if capability in self.capabilities and self.busy < self.max_concurrency:
            self.busy += 1
            self._dispatch(capability, msg)
            return
        logger.warning("late task delivery returned: no free slot", subject=msg.subject)
        try:
            await msg.nak()
        except Exception as exc:
            logger.debug("nak failed", error=repr(exc))

    # -- the loop ----------------------------------------------------------------------
    def _next_lane(self) -> Lane | None:
        if not self._flagged:
            return None
        top = max(lane.band for lane in self._flagged)
        n = len(self.capabilities)
        candidates = [lane for lane in self._flagged if lane.band == top]
        return min(
            candidates, key=lambda ln: (self.capabilities.index(ln.capability) - self._turn) % n
        )

    async def run(self) -> None:
        """Pull into free slots until ``stop()``; returns after the pull in progress."""
        loop = asyncio.get_running_loop()
        next_rescan = loop.time() + self.rescan_s
        while not self._stopping:
            self._changed.clear()
            now = loop.time()
            if now >= next_rescan:
                self._flagged.update(self._lanes)
                next_rescan = now + self.rescan_s
            free = self.max_concurrency - self.busy
            lane = self._next_lane() if free > 0 else None
            if lane is None:  # every slot busy, or nothing to pull: wait for a change
                timeout = max(next_rescan - now, 0.0) if free > 0 else None
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            seen = self._notices[lane]
            wait_s = NOTICE_WAIT_S if lane in self._fresh else 0.0
            self._fresh.discard(lane)
            try:
                msgs = await self._puller.pull(
                    self._names.task_consumer(lane.capability, lane.band), free, wait_s=wait_s
                )
            except Exception as exc:  # connection lost: nats-py reconnects by itself
                logger.warning("pull failed", capability=lane.capability, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            self._turn += 1
            if len(msgs) < free and self._notices[lane] == seen:
                self._flagged.discard(lane)
            for msg in msgs:
                self.busy += 1
                self._dispatch(lane.capability, msg)
