"""``TasksReady`` notices: wake one agent with a free slot per batch of admitted tasks.

Agents with a free slot listen on ``<p>.control.ready.<capability>`` in a queue group,
so each notice wakes one agent; a notice no agent heard (all full) is repeated on the
backlog subject for every agent (``agentbus.bus.notices.Announcer``). A notice carries the
number of tasks it announces (``count``); the agent that hears it pulls up to that
many and announces the rest again if it has no room for them.

The first task of a capability and band in an event-loop iteration is announced at
once, right after its publish was *issued*, without waiting for the stream's ack: the
notice travels behind the task on the same connection, so the server routes it after
it received the task, and the agent's pull after a notice waits briefly (``no_wait``
with ``expires``) in case the stream has not stored the task yet. That takes the ack
round trip off the idle → running path of a lone task. Further tasks of the same
capability and band in that iteration are announced together, in one notice sent
when the stream acknowledged all of them: a pull for several tasks of which only the
first was stored would end after that one (``404``), and the others would wait for a
rescan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from agentbus.bus import Bus
from agentbus.bus.notices import Announcer

_Key = tuple[str, int]  # (capability, band)


class ReadyNotices:
    """Announces admitted tasks with ``TasksReady``, one notice per burst and band."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.announcer = Announcer(bus)
        self._sent: set[_Key] = set()  # announced at once in this loop iteration
        self._pending: dict[_Key, list[Awaitable[object] | None]] = {}  # the rest: acks
        self._senders: set[asyncio.Task[None]] = set()

    @property
    def published(self) -> int:
        """Notices sent (for tests and metrics)."""
        return self.announcer.announced

    async def post(
        self, capability: str, band: int, acked: Awaitable[object] | None = None
    ) -> None:
        """Announce a task of ``band`` of ``capability`` whose publish was just issued.

        ``acked``: the publish's ack future. A task announced in a burst is counted in
        the burst's notice only if it was acknowledged (without ``acked``: always).
        """
        key = (capability, band)
        if not self._sent and not self._pending:
            asyncio.get_running_loop().call_soon(self._end_of_iteration)
        if key in self._sent:
            self._pending.setdefault(key, []).append(acked)
            return
        self._sent.add(key)
        await self._send(key, 1)

    async def close(self) -> None:
        """Send the notices still waiting for acks, hear their answers, stop."""
        await asyncio.gather(*self._senders, return_exceptions=True)
        await self.announcer.close()

    def _end_of_iteration(self) -> None:
        self._sent.clear()
        batches, self._pending = self._pending, {}
        for key in sorted(batches, key=lambda k: -k[1]):  # higher bands first
            sender = asyncio.create_task(self._send_when_stored(key, batches[key]))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send_when_stored(self, key: _Key, acks: list[Awaitable[object] | None]) -> None:
        futures = [ack for ack in acks if ack is not None]
        results = await asyncio.gather(*futures, return_exceptions=True)
        stored = len(acks) - len(futures)
        stored += sum(not isinstance(r, BaseException) for r in results)
        if stored:
            await self._send(key, stored)

    async def _send(self, key: _Key, count: int) -> None:
        capability, band = key
        await self.announcer.announce(capability, band, count)
