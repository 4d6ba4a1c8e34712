"""Singleton leases in KV: exactly one holder of a named duty at a time.

Services that run replicated (the scheduler) hold a lease before they do work that
must not run twice at once (sweeps, dead-letter moves, placement). The lease is the
key ``<duty>`` in KV ``<p>_leases``, written with a per-message TTL (ADR-43): ``create``
takes a free lease, a compare-and-set write on the last revision renews it, and the
server deletes an entry that nobody renewed for ``ttl_s`` (so a crashed holder's lease
frees itself, no clocks compared across machines).

The holder counts itself holding only until ``ttl_s - safety_s`` after the *send* of
its last successful write: a holder that cannot renew (partitioned, paused) gives up
before the server can hand the lease to someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.messages import Message
from agentbus.names import check_token


class LeaseRecord(Message, frozen=True, kw_only=True):
    """KV ``<p>_leases`` value: who holds the duty (readable with ``nats kv get``)."""

    holder: str
    ttl_s: float


class KvLease:
    """Hold the lease ``duty`` as ``holder`` while ``run`` runs.

    Usage::

        lease = KvLease(bus, "scheduler-sweeps", holder=instance_id, ttl_s=10)
        runner = asyncio.create_task(lease.run(stop))
        ...
        if lease.held:  # check before each round of singleton work
            await sweep()

    Args:
        bus: the connection (``ensure()`` must have created ``<p>_leases``).
        duty: the lease name, a KV key token (``[a-z0-9_-]``).
        holder: this instance's unique id.
        ttl_s: lease length in seconds, whole seconds >= 2 (server TTLs are whole
            seconds); renewed every ``ttl_s / 3``.
    """

    def __init__(self, bus: Bus, duty: str, *, holder: str, ttl_s: float = 10.0) -> None:
        if ttl_s < 2 or ttl_s != math.floor(ttl_s):
            raise ValueError(f"ttl_s must be a whole number of seconds >= 2, got {ttl_s}")
        self.bus = bus
        self.duty = check_token("lease duty", duty)
        self.holder = holder
        self.ttl_s = ttl_s
        self.safety_s = max(1.0, ttl_s / 5)
        self._revision = 0
        self._valid_until = 0.0  # time.monotonic()
        self.changed = asyncio.Event()  # set on every gain or loss

    @property
    def held(self) -> bool:
        """Whether this instance holds the lease now (safe to do the singleton work)."""
        return time.monotonic() < self._valid_until

    async def run(self, stop: asyncio.Event) -> None:
        """Take and renew the lease until ``stop`` is set; release it on the way out."""
        kv = await self.bus.kv(self.bus.names.leases_bucket)
        value = msgspec.json.encode(LeaseRecord(holder=self.holder, ttl_s=self.ttl_s))
        subject = f"$KV.{self.bus.names.leases_bucket}.{self.duty}"
        try:
            while not stop.is_set():
                was = self.held
                sent = time.monotonic()
                try:
                    if self._revision and was:
                        ack = await self.bus.js.publish(
                            subject,
                            value,
                            headers={"Nats-Expected-Last-Subject-Sequence": str(self._revision)},
                            msg_ttl=self.ttl_s,
                        )
                        self._revision = ack.seq
                    else:
                        self._revision = await kv.create(self.duty, value, msg_ttl=self.ttl_s)
                    self._valid_until = sent + self.ttl_s - self.safety_s
                except nats.js.errors.KeyWrongLastSequenceError:
                    self._lost("taken by another holder")
                except nats.js.errors.APIError as exc:
                    if exc.err_code in (10071, 10164):  # wrong last sequence: taken
                        self._lost("taken by another holder")
                    else:
                        logger.warning("lease write failed", duty=self.duty, error=repr(exc))
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    logger.warning("lease write failed", duty=self.duty, error=repr(exc))
                if self.held != was:
                    logger.info(
                        "lease " + ("gained" if self.held else "lost"),
                        duty=self.duty,
                        holder=self.holder,
                    )
                    self.changed.set()
                    self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
        finally:
            await self._release()

    def _lost(self, reason: str) -> None:
        self._revision = 0
        self._valid_until = 0.0
        logger.debug("lease not held", duty=self.duty, reason=reason)

    async def _release(self) -> None:
        if not self.held:
            return
        self._valid_until = 0.0
        self.changed.set()
        self.changed.clear()
        try:
            kv = await self.bus.kv(self.bus.names.leases_bucket)
            await kv.delete(self.duty, last=self._revision)
            logger.info("lease released", duty=self.duty, holder=self.holder)
        except Exception as exc:  # it expires by TTL anyway
            logger.debug("lease release failed", duty=self.duty, error=repr(exc))
