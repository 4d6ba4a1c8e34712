"""``TasksReady`` notices: tell idle agents that a band of a capability has tasks.

Agents pull with no-wait requests and, when every band is empty, sleep until a notice
(``agentbus.fetch``). Admission posts one right after it *issued* a task's publish,
without waiting for the stream's ack: the notice travels behind the task on the same
connection, so the server routes it after it received the task, and the agent's pull
after a notice waits briefly (``no_wait`` with ``expires``) in case the stream has not
stored the task yet. That takes the ack round trip off the idle → running path.

The first notice for a capability and band in an event-loop iteration goes out at
once (the idle → running path of a lone task); further posts for it in the same
iteration are sent once, at the end of the iteration, when every task published in
it is ahead of that notice in the connection's buffer.
"""

from __future__ import annotations

import asyncio

import nats.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.messages import TasksReady, encode


class ReadyNotices:
    """Publishes ``TasksReady`` on ``<p>.control.ready.<capability>``, coalesced."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._sent: set[tuple[str, int]] = set()  # sent in this loop iteration
        self._pending: set[tuple[str, int]] = set()  # posted again in it: send at its end
        self._senders: set[asyncio.Task[None]] = set()
        self.published = 0
        """Notices sent (for tests and metrics)."""

    async def post(self, capability: str, band: int) -> None:
        """Announce that ``band`` of ``capability`` has a task just published."""
        key = (capability, band)
        if not self._sent:
            asyncio.get_running_loop().call_soon(self._end_of_iteration)
        if key in self._sent:
            self._pending.add(key)
            return
        self._sent.add(key)
        await self._send(key)

    def _end_of_iteration(self) -> None:
        self._sent.clear()
        if self._pending:
            keys, self._pending = self._pending, set()
            sender = asyncio.create_task(self._send_all(keys))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send_all(self, keys: set[tuple[str, int]]) -> None:
        for key in sorted(keys, key=lambda k: -k[1]):
            await self._send(key)

    async def _send(self, key: tuple[str, int]) -> None:
        capability, band = key
        try:
            await self.bus.nc.publish(
                self.bus.names.ready_subject(capability),
                encode(TasksReady(capability=capability, band=band)),
            )
        except nats.errors.Error as exc:  # agents rescan: a lost notice only delays
            logger.warning("ready notice not sent", capability=capability, error=repr(exc))
            return
        self.published += 1
