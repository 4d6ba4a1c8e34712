"""When an agent rescans its task subjects: often while work is about, rarely when idle.

Tasks reach an agent by push (ready and backlog notices, ``agentbus.bus.notices``); the
rescan (``Intake._rescan``: how many messages each band's subject holds) is the safety
net for what comes unannounced. It runs every ``min_s`` while there is any sign of
work, and backs off, doubling up to ``max_s``, while rescans find every task subject
of the agent's capabilities empty and nothing arrived in between:

* a notice heard, a task pulled, or a rescan finding any message (queued, or delivered
  and not yet acked: a work-queue stream keeps a message until it is acked) snaps the
  interval back to ``min_s``;
* a message can be redelivered unannounced only after sitting in the stream for a
  whole lease (a lapsed lease) or a nak delay, so an interval capped at the lease
  (``max_s`` <= the consumers' AckWait) means every idle agent has seen it held,
  and rescans every ``min_s`` again, before its lease lapses.

The clock is pure: callers pass monotonic times. ``probe_bands`` is the rescan's
question to the server.
"""

from __future__ import annotations

from loguru import logger

from agentbus.bus.pulls import NoWaitPuller
from agentbus.names import BANDS, Names


async def probe_bands(puller: NoWaitPuller, names: Names, capability: str) -> set[int] | None:
    """The priority bands of ``capability`` whose subject holds any message.

    Two stream-info requests (band 0's subject, then the others'), no pull; a message
    delivered and not yet acked counts (a work-queue stream keeps it until the ack).
    None when a request failed (the caller then pulls every band).
    """
    subject = names.task_subject(capability)
    try:
        held = await puller.subject_counts(subject)
        held |= await puller.subject_counts(f"{subject}.>")
    except Exception as exc:  # connection trouble
        logger.debug("band probe failed", capability=capability, error=repr(exc))
        return None
    return {band for band in range(BANDS) if held.get(names.task_subject(capability, band), 0)}


class RescanClock:
    """The next rescan's due time and the current interval (seconds, monotonic).

    Args:
        min_s: the interval while work is about (and the first one).
        max_s: the longest interval of an idle agent (raised to ``min_s`` if lower).
        now: the current monotonic time.
    """

    def __init__(self, min_s: float, max_s: float, now: float) -> None:
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self.interval_s = min_s
        self.due = now + min_s
        self._stirred = False

    def stir(self, now: float) -> None:
        """Work showed up (a notice, a task): rescan within ``min_s`` again."""
        self._stirred = True
        self.interval_s = self.min_s
        self.due = min(self.due, now + self.min_s)

    def scanned(self, now: float, *, empty: bool) -> None:
        """A rescan ran; ``empty``: it found no message in any band (and no probe failed).

        Empty with nothing stirring since the previous rescan doubles the interval (up
        to ``max_s``); anything else sets it back to ``min_s``.
        """
        if empty and not self._stirred:
            self.interval_s = min(self.interval_s * 2, self.max_s)
        else:
            self.interval_s = self.min_s
        self._stirred = False
        self.due = now + self.interval_s
