"""The placement loop: one instance writes ``<p>_placements`` from the fleet state.

Exactly one scheduler instance places at a time: the holder of the KV lease
``scheduler-placement`` (``agentbus.kv.lease.KvLease``). The holder re-places on every
change the fleet state marks ``dirty`` (deployment change, node join/loss/label or
capacity change, foreign placement change), on gaining the lease, at least every
``place_interval_s``, and after a failed pass within a short backoff (0.25 s doubling),
and writes the difference to ``<p>_placements`` with compare-and-set on each key's last
revision, so a holder with a stale view (or a deposed one still finishing a pass)
cannot overwrite a newer placement. Each pass publishes a ``PlacementEvent`` per
replica placed, moved, removed or newly unplaced. Supervisors watch that bucket and
start or stop the replicas placed on their node.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.errors import UnavailableError
from agentbus.kv.lease import KvLease
from agentbus.messages import Backoff, Placement, PlacementEvent, PlacementKind, encode, utcnow
from agentbus.retry import backoff_s
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.fleet.placement import PlacementPlan
from agentbus_scheduler.fleet.state import FleetState, replica_of

PLACEMENT_LEASE = "scheduler-placement"
"""Name of the lease (key in KV ``<p>_leases``) that gates placement."""
_RETRY = Backoff(initial_s=0.25, factor=2.0, max_s=5.0, jitter=0.5)
"""Pause after a failed placement pass (``agentbus.retry.backoff_s``), at most
``place_interval_s``."""


class Placer:
    """Holds (or waits for) the placement lease and places while it holds it."""

    def __init__(self, ctx: SchedulerContext, state: FleetState) -> None:
        self.ctx = ctx
        self.state = state
        settings = ctx.settings
        self.lease = KvLease(
            ctx.bus,
            PLACEMENT_LEASE,
            holder=settings.instance_id,
            ttl_s=settings.placement_lease_ttl_s,
        )
        self._lock = asyncio.Lock()
        self._unplaced: dict[str, str] = {}  # as last reported by this holder

    async def run(self, stop: asyncio.Event) -> None:
        """Hold (or wait for) the placement lease and place until ``stop``."""
        while not stop.is_set():
            try:
                await self.state.wait_ready()
                break
            except UnavailableError:
                logger.warning("waiting for the fleet state")
        metrics, settings = self.ctx.metrics, self.ctx.settings
        lease_task = asyncio.create_task(self.lease.run(stop), name="placement lease")
        stopper = asyncio.create_task(stop.wait())
        failures = 0  # passes failed in a row
        try:
            while not stop.is_set():
                held = self.lease.held
                metrics.placement_lease_held.set(1 if held else 0)
                if held:
                    failures += 1
                    try:
                        await self.place_once()
                        failures = 0
                    except (nats.errors.Error, TimeoutError, UnavailableError) as exc:
                        metrics.placement_pass_failures.inc()
                        logger.warning("placement pass failed", error=repr(exc), failures=failures)
                    except Exception:
                        metrics.placement_pass_failures.inc()
                        logger.exception("placement pass failed")
                else:
                    failures = 0
                    self._unplaced = {}
                    metrics.unplaced.set(0)
                # A failed pass (a bucket electing its leader after a server died) is
                # retried soon: the replicas of a lost node wait for it.
                wait_s = backoff_s(_RETRY, failures) if failures else settings.place_interval_s
                waiters = {
                    asyncio.create_task(self.state.dirty.wait()),
                    asyncio.create_task(self.lease.changed.wait()),
                }
                await asyncio.wait(
                    waiters | {stopper},
                    timeout=min(wait_s, settings.place_interval_s),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            stopper.cancel()
            # The lease task ends on ``stop`` (and releases); cancel it if we were cancelled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({lease_task}, timeout=settings.placement_lease_ttl_s)
            lease_task.cancel()
            await asyncio.gather(lease_task, return_exceptions=True)
            metrics.placement_lease_held.set(0)

    async def place_once(self) -> PlacementPlan:
        """Compute placements from the mirrors and, holding the lease, write the difference.

        Without the lease this is a dry run. A write refused by compare-and-set (the
        mirror was stale) is counted and retried on the next pass.

        Raises:
            nats.errors.Error: a KV write failed (the next pass retries).
        """
        async with self._lock:
            self.state.dirty.clear()
            plan = self.state.plan()
            if not self.lease.held:
                return plan
            self.ctx.metrics.placement_passes.inc()
            before = dict(self.state.placements.values)
            kv = await self.ctx.bus.kv(self.ctx.bus.names.placements_bucket)
            results = await asyncio.gather(
                *(self._put(kv, key, p) for key, p in plan.to_put.items()),
                *(self._delete(key) for key in plan.to_delete),
            )
            if not all(results):
                self.state.dirty.set()
            events = [
                self._placed_event(key, p, before.get(key), plan.reasons.get(key, ""))
                for (key, p), ok in zip(plan.to_put.items(), results, strict=False)
                if ok
            ]
            for key, ok in zip(plan.to_delete, results[len(plan.to_put) :], strict=True):
                if ok and key not in plan.unplaced:
                    events.append(self._event(key, "removed", before.get(key), plan.reasons[key]))
            for key, reason in plan.unplaced.items():
                if self._unplaced.get(key) != reason:
                    why = plan.reasons.get(key) or reason  # a displaced replica says why
                    events.append(self._event(key, "unplaced", before.get(key), why))
                    logger.warning("replica unplaced", key=key, reason=reason)
            self._unplaced = dict(plan.unplaced)
            self.ctx.metrics.unplaced.set(len(plan.unplaced))
            await self._publish_events(events)
            return plan

    async def _put(self, kv: KeyValue, key: str, placement: Placement) -> bool:
        placements = self.state.placements
        try:
            revision = await kv.update(key, encode(placement), last=placements.revision(key))
        except nats.js.errors.KeyWrongLastSequenceError:
            self.ctx.metrics.placement_conflicts.inc()
            logger.info("placement write refused: stale view", key=key)
            return False
        placements.apply(key, revision, placement)
        self.ctx.metrics.placement_writes.labels("put").inc()
        logger.info("replica placed", key=key, node_id=placement.node_id)
        return True

    async def _delete(self, key: str) -> bool:
        """Delete marker with compare-and-set (``kv.delete`` does not return the revision)."""
        placements = self.state.placements
        subject = f"$KV.{self.ctx.bus.names.placements_bucket}.{key}"
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(placements.revision(key)),
        }
        try:
            ack = await self.ctx.bus.js.publish(subject, b"", headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in (10071, 10164):  # wrong last sequence
                raise
            self.ctx.metrics.placement_conflicts.inc()
            logger.info("placement delete refused: stale view", key=key)
            return False
        placements.apply(key, ack.seq, None)
        self.ctx.metrics.placement_writes.labels("delete").inc()
        logger.info("placement removed", key=key)
        return True

    def _placed_event(
        self, key: str, placement: Placement, old: Placement | None, reason: str
    ) -> PlacementEvent:
        kind: PlacementKind = "moved" if old is not None else "placed"
        event = self._event(key, kind, old, reason)
        return msgspec.structs.replace(event, node_id=placement.node_id)

    def _event(
        self, key: str, kind: PlacementKind, old: Placement | None, reason: str
    ) -> PlacementEvent:
        deployment, replica = replica_of(key)
        return PlacementEvent(
            deployment=deployment,
            replica=replica,
            kind=kind,
            at=utcnow(),
            previous_node_id=old.node_id if old else None,
            reason=reason,
            scheduler_id=self.ctx.settings.instance_id,
        )

    async def _publish_events(self, events: list[PlacementEvent]) -> None:
        results = await asyncio.gather(
            *(self.ctx.bus.publish_event("placement", e.kind, e) for e in events),
            return_exceptions=True,
        )
        if failed := [r for r in results if isinstance(r, BaseException)]:
            logger.warning(
                "placement events not published", count=len(failed), error=repr(failed[0])
            )
