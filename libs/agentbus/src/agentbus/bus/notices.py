"""Ready notices: each batch of queued tasks wakes one agent that has a free slot.

``TasksReady{capability, band, count}`` on ``<p>.control.ready.<capability>`` tells
agents that ``count`` tasks were put on a band's subject. If every idle agent heard
every notice and answered it with a pull, the CPU spent per notice would grow with
the fleet (``bench/notice_herd.py`` measures it). Instead:

* **One listener per notice.** Agents subscribe to the ready subject in queue group
  ``READY_QUEUE``, and only while they have a free slot (``ReadyListener.offer`` /
  ``withdraw``: a SUB or UNSUB line each). The server hands each notice to one member;
  that agent pulls up to ``count`` tasks of the band and passes on (announces again)
  what it cannot take. Leaving the group drains the subscription, so a notice the
  server routed just before the UNSUB still reaches the agent, which passes it on.
* **Unheard notices go to everyone.** ``Announcer`` publishes every notice with a reply
  subject ``<inbox>.<band>.<count>.<capability>``. When the group has no member
  (every agent full) the server answers there with a ``503`` status (no responders:
  nats-py enables them on every connection that supports headers), and the announcer
  repeats the notice on ``<p>.control.backlog.<capability>``, which every agent hears
  all the time. A full agent only marks the band; the next agent whose slot frees
  pulls the marked bands, highest first, so priorities hold while the fleet is
  saturated. Backlog notices are rate limited per (capability, band): the first goes
  at once, later ones at most every ``BACKLOG_INTERVAL_S`` with the counts summed (an
  agent keeps a band marked while its last pull left tasks in it, so a saturated fleet
  needs no notice per task).
* **Backstops.** An agent that was out of the group also pulls band 0 when a slot
  frees, and every agent still rescans its task subjects (every ``rescan_s`` while
  work is about, rarely when idle: ``agentbus.runtime.rescan``): a subscriber of
  the ready subject outside the queue group (a debugging ``nats sub '>'``) hides the
  503, a reconnect can lose a notice, and redeliveries after a lapsed lease come
  unannounced.

Verified against nats-server 2.15 in a probe: a core publish with a reply subject and
no interest gets ``503`` on the reply (to the publisher only); a queue subscription is
interest; after ``drain()`` the 503 comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import nats.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.bus.connection import Bus
from agentbus.messages import TasksReady, encode

READY_QUEUE = "agents"
"""Queue group of the ready subjects: one member (agent with a free slot) per notice."""
BACKLOG_INTERVAL_S = 0.05
"""Least time between two backlog notices of one capability and band."""

_decode_ready = msgspec.json.Decoder(TasksReady).decode
_Key = tuple[str, int]  # (capability, band)


class Announcer:
    """Publishes ``TasksReady``; repeats on the backlog subject what no agent heard.

    Used by the scheduler (tasks admitted) and by agents (notices passed on, retries
    due). Counters ``announced``, ``unheard`` and ``backlogged`` are for tests and
    metrics.
    """

    def __init__(self, bus: Bus) -> None:
        self._nc = bus.nc
        self._names = bus.names
        self._inbox = ""
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._last: dict[_Key, float] = {}  # loop time of the last backlog notice
        self._due: dict[_Key, int] = {}  # counts waiting for the next backlog notice
        self._timers: dict[_Key, asyncio.TimerHandle] = {}
        self._senders: set[asyncio.Task[None]] = set()
        self.announced = 0
        self.unheard = 0
        self.backlogged = 0

    async def start(self) -> None:
        """Subscribe to the reply inbox; idempotent (``announce`` calls it)."""
        async with self._lock:
            if self._sub is None:
                inbox = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(f"{inbox}.>", cb=self._on_reply)
                self._inbox = inbox

    async def close(self) -> None:
        """Hear the answers to notices sent so far, send the backlog notices due, stop."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.drain()  # type: ignore[no-untyped-call]  # UNSUB, round trip: 503s first
            except Exception as exc:  # closed connection: nothing to hear any more
                logger.debug("announcer drain failed", error=repr(exc))
        for key, timer in list(self._timers.items()):
            timer.cancel()
            self._send_backlog(key)
        await asyncio.gather(*self._senders, return_exceptions=True)

    async def announce(self, capability: str, band: int, count: int = 1) -> None:
        """Wake one agent with a free slot for ``count`` tasks of ``band``.

        A failed publish is logged and dropped: agents rescan.
        """
        if self._sub is None:
            await self.start()
        notice = TasksReady(capability=capability, band=band, count=count)
        try:
            await self._nc.publish(
                self._names.ready_subject(capability),
                encode(notice),
                reply=f"{self._inbox}.{band}.{count}.{capability}",
            )
        except nats.errors.Error as exc:
            logger.warning("ready notice not sent", capability=capability, error=repr(exc))
            return
        self.announced += 1

    async def _on_reply(self, msg: Msg) -> None:
        if not msg.headers or msg.headers.get("Status") != "503":
            return
        try:
            band, count, capability = msg.subject[len(self._inbox) + 1 :].split(".", 2)
            key = (capability, int(band))
            n = int(count)
        except ValueError:
            logger.debug("stray reply on the notice inbox", subject=msg.subject)
            return
        self.unheard += 1
        self.backlog(*key, n)

    def backlog(self, capability: str, band: int, count: int) -> None:
        """Tell every agent that ``band`` holds ``count`` tasks nobody took (rate limited)."""
        key = (capability, band)
        self._due[key] = self._due.get(key, 0) + count
        if key in self._timers:
            return  # a notice is already scheduled: it will carry this count too
        loop = asyncio.get_running_loop()
        wait_s = self._last.get(key, -math.inf) + BACKLOG_INTERVAL_S - loop.time()
        if wait_s <= 0:
            self._send_backlog(key)
        else:
            self._timers[key] = loop.call_later(wait_s, self._send_backlog, key)

    def _send_backlog(self, key: _Key) -> None:
        self._timers.pop(key, None)
        count = self._due.pop(key, 0)
        if count:
            self._last[key] = asyncio.get_running_loop().time()
            sender = asyncio.create_task(self._publish_backlog(key, count))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _publish_backlog(self, key: _Key, count: int) -> None:
        capability, band = key
        notice = TasksReady(capability=capability, band=band, count=count)
        try:
            await self._nc.publish(self._names.backlog_subject(capability), encode(notice))
        except nats.errors.Error as exc:
            logger.warning("backlog notice not sent", capability=capability, error=repr(exc))
            return
        self.backlogged += 1


class ReadyListener:
    """An agent's ears: the queue group while it has a free slot, the backlog always.

    ``heard(notice, backlog)`` is called for every notice that decodes (``backlog``:
    it came on the backlog subject); ``on_bad(subject, reason)`` for one that does not.
    """

    def __init__(
        self,
        bus: Bus,
        capabilities: Iterable[str],
        *,
        heard: Callable[[TasksReady, bool], None],
        on_bad: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._nc = bus.nc
        self._names = bus.names
        self._capabilities = list(capabilities)
        self._heard = heard
        self._on_bad = on_bad
        self._backlog_subs: list[Subscription] = []
        self._ready_subs: list[Subscription] = []
        self._leaving: set[asyncio.Task[None]] = set()
        self.listening = False
        """Whether it is in the queue group of every capability now."""
        self.offers = 0
        """How often it joined the queue groups (for tests and metrics)."""

    async def start(self) -> None:
        """Subscribe to the backlog subjects (for the agent's lifetime)."""
        for capability in self._capabilities:
            sub = await self._nc.subscribe(
                self._names.backlog_subject(capability), cb=self._on_backlog
            )
            self._backlog_subs.append(sub)

    async def offer(self) -> bool:
        """Join the queue groups (a slot is free); whether it was out of them before.

        Out of the groups, notices may have gone unheard: the caller looks for itself.
        A failure (connection down) is logged; the caller tries again later.
        """
        if self.listening:
            return False
        subs: list[Subscription] = []
        try:
            for capability in self._capabilities:
                subs.append(
                    await self._nc.subscribe(
                        self._names.ready_subject(capability),
                        queue=READY_QUEUE,
                        cb=self._on_ready,
                    )
                )
        except nats.errors.Error as exc:
            logger.warning("could not join the ready queue group", error=repr(exc))
            for sub in subs:
                self._leave(sub)
            return False
        self._ready_subs = subs
        self.listening = True
        self.offers += 1
        return True

    def withdraw(self) -> None:
        """Leave the queue groups (no free slot). Notices already routed still arrive."""
        if not self.listening:
            return
        self.listening = False
        subs, self._ready_subs = self._ready_subs, []
        for sub in subs:
            self._leave(sub)

    def _leave(self, sub: Subscription) -> None:
        leaving = asyncio.create_task(self._drain(sub))
        self._leaving.add(leaving)
        leaving.add_done_callback(self._leaving.discard)

    async def _drain(self, sub: Subscription) -> None:
        reconnects = self._nc.stats["reconnects"]
        try:
            await sub.drain()  # type: ignore[no-untyped-call]  # UNSUB, round trip, the rest
            if self._nc.stats["reconnects"] == reconnects:
                return
        except Exception as exc:  # closed, or reconnecting
            logger.debug("ready subscription drain failed", error=repr(exc))
        # nats-py subscribes again, after a reconnect, to everything it still holds:
        # had the reconnect come during the drain, the server would route notices to
        # a sid the client dropped. Forget it here and UNSUB again (the server ignores
        # an unknown sid).
        with contextlib.suppress(Exception):
            self._nc._remove_sub(sub._id)
            await self._nc._send_unsubscribe(sub._id)

    async def close(self) -> None:
        """Leave the queue groups (hearing what is on its way) and the backlog subjects."""
        self.withdraw()
        await asyncio.gather(*self._leaving, return_exceptions=True)
        for sub in self._backlog_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._backlog_subs.clear()

    async def _on_ready(self, msg: Msg) -> None:
        if (notice := await self._decode(msg)) is not None:
            self._heard(notice, False)

    async def _on_backlog(self, msg: Msg) -> None:
        if (notice := await self._decode(msg)) is not None:
            self._heard(notice, True)

    async def _decode(self, msg: Msg) -> TasksReady | None:
        try:
            return _decode_ready(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.debug("bad ready notice ignored", subject=msg.subject)
            if self._on_bad is not None:
                await self._on_bad(msg.subject, f"not a TasksReady: {exc}")
            return None
