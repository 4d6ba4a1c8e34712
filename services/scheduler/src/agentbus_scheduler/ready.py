"""``TasksReady`` notices: tell idle agents that a band of a capability has tasks.

Agents pull with no-wait requests and, when every band is empty, sleep until a notice
(``agentbus.fetch``). Admission posts one after the work stream acknowledged a task.
Notices for the same capability and band posted in the same event-loop iteration are
sent once: they are flushed to the socket after that iteration, when every task whose
ack was processed in it is already stored, so one notice covers them all.
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
        self._sent: set[tuple[str, int]] = set()
        self.published = 0
        """Notices sent (for tests and metrics)."""

    async def post(self, capability: str, band: int) -> None:
        """Announce that ``band`` of ``capability`` has a task; failures are logged."""
        key = (capability, band)
        if key in self._sent:
            return
        if not self._sent:
            asyncio.get_running_loop().call_soon(self._sent.clear)
        self._sent.add(key)
        try:
            await self.bus.nc.publish(
                self.bus.names.ready_subject(capability),
                encode(TasksReady(capability=capability, band=band)),
            )
        except nats.errors.Error as exc:  # agents rescan: a lost notice only delays
            logger.warning("ready notice not sent", capability=capability, error=repr(exc))
            return
        self.published += 1
