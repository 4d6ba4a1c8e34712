"""Deployments and the placement loop: the KV glue around ``placement.place``.

Every scheduler instance mirrors KV ``<p>_deployments``, ``<p>_nodes`` (supervisor
heartbeats that expire by TTL) and ``<p>_placements`` in memory through KV watchers.
Exactly one instance places at a time: the holder of the KV lease
``scheduler-placement`` (``agentbus.lease.KvLease``). The holder re-places on every
deployment change, node join/loss/label or capacity change, foreign placement change,
on gaining the lease, and at least every ``place_interval_s``, and writes the
difference to ``<p>_placements`` with compare-and-set on each key's last revision, so
a holder with a stale view (or a deposed one still finishing a pass) cannot overwrite
a newer placement. Supervisors watch that bucket and start or stop the replicas placed
on their node.

Any instance answers ``deploy``, ``delete``, ``scale`` and ``placements``; one that
does not hold the lease stores the spec and waits (``deploy_wait_s``) until its mirror
shows the holder's placements. Unplaced replicas are the same pure function of the
mirrored state on every instance, so any instance reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.errors import ConflictError, NotFoundError, UnavailableError
from agentbus.fleet_spec import validate_deployment
from agentbus.kv_mirror import KvMirror
from agentbus.lease import KvLease
from agentbus.messages import (
    DeleteDeployment,
    Deploy,
    Deployment,
    DeploymentChange,
    DeployReply,
    ListPlacements,
    NodeInfo,
    Placement,
    PlacementEvent,
    PlacementKind,
    PlacementsReply,
    ScaleDeployment,
    UnplacedReplica,
    encode,
    utcnow,
)
from agentbus.names import check_token
from agentbus.service import ServiceMetrics
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.placement import PlacementPlan, place
from agentbus_scheduler.settings import SchedulerSettings

PLACEMENT_LEASE = "scheduler-placement"
_WAIT_POLL_S = 0.05
_SCALE_ATTEMPTS = 5


def _node_changed(old: NodeInfo | None, new: NodeInfo | None) -> bool:
    """A node joined, left, or changed what placement looks at (not a mere heartbeat)."""
    if old is None or new is None:
        return old is not new

    def shape(n: NodeInfo) -> tuple[object, ...]:
        return (n.runtime, n.labels, n.capacity_replicas, n.capacity_cpus,
                n.capacity_memory_bytes)  # fmt: skip

    return shape(old) != shape(new)


def _replica_of(key: str) -> tuple[str, int]:
    name, _, replica = key.rpartition(".")
    return name, int(replica)


class Fleet:
    """Handlers of ``deploy``, ``delete``, ``scale``, ``placements`` and the placement loop."""

    def __init__(
        self,
        bus: Bus,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
        service_metrics: ServiceMetrics,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        names = bus.names
        self._dirty = asyncio.Event()
        mirror = functools.partial(
            KvMirror, bus, service_metrics=service_metrics, on_change=self._dirty.set
        )
        self.deployments = mirror(names.deployments_bucket, Deployment, source="deployments")
        self.nodes = mirror(names.nodes_bucket, NodeInfo, source="nodes", significant=_node_changed)
        self.placements = mirror(names.placements_bucket, Placement, source="placements")
        self.lease = KvLease(
            bus, PLACEMENT_LEASE, holder=settings.instance_id, ttl_s=settings.placement_lease_ttl_s
        )
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_mirrors = asyncio.Event()
        self._unplaced: dict[str, str] = {}  # as last reported by this holder

    async def start(self) -> None:
        """Start the three KV mirrors."""
        for mirror in (self.deployments, self.nodes, self.placements):
            run = mirror.run(self._stop_mirrors)
            self._tasks.append(asyncio.create_task(run, name=f"mirror {mirror.bucket}"))

    async def close(self) -> None:
        """Stop the mirrors."""
        self._stop_mirrors.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def wait_ready(self) -> None:
        """Wait for the initial replay of every mirror.

        Raises:
            UnavailableError: not ready within ``settings.ready_timeout_s``.
        """
        try:
            async with asyncio.timeout(self.settings.ready_timeout_s):
                for mirror in (self.deployments, self.nodes, self.placements):
                    await mirror.ready.wait()
        except TimeoutError as exc:
            raise UnavailableError("the scheduler has not loaded the fleet state yet") from exc

    # -- the placement loop ---------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Hold (or wait for) the placement lease and place until ``stop``."""
        while not stop.is_set():
            try:
                await self.wait_ready()
                break
            except UnavailableError:
                logger.warning("waiting for the fleet state")
        lease_task = asyncio.create_task(self.lease.run(stop), name="placement lease")
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                held = self.lease.held
                self.metrics.placement_lease_held.set(1 if held else 0)
                if held:
                    try:
                        await self.place_once()
                    except (nats.errors.Error, TimeoutError, UnavailableError) as exc:
                        logger.warning("placement pass failed", error=repr(exc))
                    except Exception:
                        logger.exception("placement pass failed")
                else:
                    self._unplaced = {}
                    self.metrics.unplaced.set(0)
                waiters = {
                    asyncio.create_task(self._dirty.wait()),
                    asyncio.create_task(self.lease.changed.wait()),
                }
                await asyncio.wait(
                    waiters | {stopper},
                    timeout=self.settings.place_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            stopper.cancel()
            # The lease task ends on ``stop`` (and releases); cancel it if we were cancelled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({lease_task}, timeout=self.settings.placement_lease_ttl_s)
            lease_task.cancel()
            await asyncio.gather(lease_task, return_exceptions=True)
            self.metrics.placement_lease_held.set(0)

    def plan(self) -> PlacementPlan:
        """What placement would write now, from the mirrors (no writes; any instance)."""
        return place(
            self.deployments.values, self.nodes.values, self.placements.values, now=utcnow()
        )

    async def place_once(self) -> PlacementPlan:
        """Compute placements from the mirrors and, holding the lease, write the difference.

        Without the lease this is a dry run. A write refused by compare-and-set (the
        mirror was stale) is counted and retried on the next pass.

        Raises:
            nats.errors.Error: a KV write failed (the next pass retries).
        """
        async with self._lock:
            self._dirty.clear()
            plan = self.plan()
            if not self.lease.held:
                return plan
            self.metrics.placement_passes.inc()
            before = dict(self.placements.values)
            kv = await self.bus.kv(self.bus.names.placements_bucket)
            results = await asyncio.gather(
                *(self._put(kv, key, p) for key, p in plan.to_put.items()),
                *(self._delete(key) for key in plan.to_delete),
            )
            if not all(results):
                self._dirty.set()
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
            self.metrics.unplaced.set(len(plan.unplaced))
            await self._publish_events(events)
            return plan

    async def _put(self, kv: KeyValue, key: str, placement: Placement) -> bool:
        try:
            revision = await kv.update(key, encode(placement), last=self.placements.revision(key))
        except nats.js.errors.KeyWrongLastSequenceError:
            self.metrics.placement_conflicts.inc()
            logger.info("placement write refused: stale view", key=key)
            return False
        self.placements.apply(key, revision, placement)
        self.metrics.placement_writes.labels("put").inc()
        logger.info("replica placed", key=key, node_id=placement.node_id)
        return True

    async def _delete(self, key: str) -> bool:
        """Delete marker with compare-and-set (``kv.delete`` does not return the revision)."""
        subject = f"$KV.{self.bus.names.placements_bucket}.{key}"
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(self.placements.revision(key)),
        }
        try:
            ack = await self.bus.js.publish(subject, b"", headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in (10071, 10164):  # wrong last sequence
                raise
            self.metrics.placement_conflicts.inc()
            logger.info("placement delete refused: stale view", key=key)
            return False
        self.placements.apply(key, ack.seq, None)
        self.metrics.placement_writes.labels("delete").inc()
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
        deployment, replica = _replica_of(key)
        return PlacementEvent(
            deployment=deployment,
            replica=replica,
            kind=kind,
            at=utcnow(),
            previous_node_id=old.node_id if old else None,
            reason=reason,
            scheduler_id=self.settings.instance_id,
        )

    async def _publish_events(self, events: list[PlacementEvent]) -> None:
        results = await asyncio.gather(
            *(self.bus.publish_event("placement", e.kind, e) for e in events),
            return_exceptions=True,
        )
        if failed := [r for r in results if isinstance(r, BaseException)]:
            logger.warning(
                "placement events not published", count=len(failed), error=repr(failed[0])
            )

    # -- views ----------------------------------------------------------------------------
    def placements_of(self, name: str | None) -> list[Placement]:
        """Current placements of deployment ``name`` (None: all), by deployment and replica."""
        found = [p for p in self.placements.values.values() if name is None or p.deployment == name]
        return sorted(found, key=lambda p: (p.deployment, p.replica))

    def unplaced_of(self, name: str | None) -> list[UnplacedReplica]:
        """Replicas of ``name`` (None: all) that no node can take now, with the reason."""
        found = []
        for key, reason in self.plan().unplaced.items():
            deployment, replica = _replica_of(key)
            if name is None or deployment == name:
                found.append(UnplacedReplica(deployment=deployment, replica=replica, reason=reason))
        return sorted(found, key=lambda u: (u.deployment, u.replica))

    def _reply(self, deployment: Deployment, change: DeploymentChange) -> DeployReply:
        return DeployReply(
            deployment=deployment,
            placements=self.placements_of(deployment.name),
            unplaced=self.unplaced_of(deployment.name),
            change=change,
        )

    async def _settle(self, name: str) -> None:
        """Place ``name`` now (lease holder), or wait until the holder has placed it."""
        if self.lease.held:
            await self.place_once()
            return
        self._dirty.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deploy_wait_s
        prefix = f"{name}."
        while loop.time() < deadline:
            plan = self.plan()
            pending = [k for k in (*plan.to_put, *plan.to_delete) if k.startswith(prefix)]
            if not pending:
                return
            await asyncio.sleep(_WAIT_POLL_S)
        logger.warning("placement not settled in time (no lease holder?)", deployment=name)

    # -- handlers -------------------------------------------------------------------------
    async def deploy(self, request: Deploy) -> DeployReply:
        """Store a deployment spec, have it placed and reply with its placements.

        Raises:
            ContractError: invalid spec.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        deployment = request.deployment
        validate_deployment(deployment)
        await self.wait_ready()
        old = self.deployments.values.get(deployment.name)
        change: DeploymentChange = (
            "created" if old is None else ("unchanged" if old == deployment else "updated")
        )
        kv = await self.bus.kv(self.bus.names.deployments_bucket)
        try:
            if change != "unchanged":
                revision = await kv.put(deployment.name, encode(deployment))
                self.deployments.apply(deployment.name, revision, deployment)
            await self._settle(deployment.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not store deployment: {exc!r}") from exc
        logger.info("deployment stored", deployment=deployment.name, change=change,
                    replicas=deployment.replicas)  # fmt: skip
        return self._reply(deployment, change)

    async def scale(self, request: ScaleDeployment) -> DeployReply:
        """Set ``replicas`` of a stored deployment (compare-and-set on its revision).

        Raises:
            NotFoundError: no deployment of that name.
            ConflictError: the spec kept changing under the compare-and-set.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        check_token("deployment name", request.name)
        await self.wait_ready()
        kv = await self.bus.kv(self.bus.names.deployments_bucket)
        try:
            for _ in range(_SCALE_ATTEMPTS):
                try:
                    entry = await kv.get(request.name)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    raise NotFoundError(f"deployment {request.name!r} not found") from None
                old = msgspec.json.decode(entry.value or b"", type=Deployment)
                new = msgspec.structs.replace(old, replicas=request.replicas)
                if new == old:
                    await self._settle(old.name)
                    return self._reply(old, "unchanged")
                try:
                    revision = await kv.update(request.name, encode(new), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                self.deployments.apply(request.name, revision, new)
                await self._settle(new.name)
                logger.info("deployment scaled", deployment=new.name, replicas=new.replicas)
                return self._reply(new, "updated")
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not scale deployment: {exc!r}") from exc
        raise ConflictError(f"deployment {request.name!r} changed {_SCALE_ATTEMPTS} times")

    async def delete(self, request: DeleteDeployment) -> DeployReply:
        """Delete a deployment and its placements; reply with the deleted spec.

        Raises:
            NotFoundError: no deployment of that name.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        check_token("deployment name", request.name)
        await self.wait_ready()
        deployment = self.deployments.values.get(request.name)
        if deployment is None:
            raise NotFoundError(f"deployment {request.name!r} not found")
        kv = await self.bus.kv(self.bus.names.deployments_bucket)
        try:
            await kv.delete(request.name)
            self.deployments.forget(request.name)
            await self._settle(request.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not delete deployment: {exc!r}") from exc
        logger.info("deployment deleted", deployment=request.name)
        return self._reply(deployment, "deleted")

    async def list_placements(self, request: ListPlacements) -> PlacementsReply:
        """Placements and unplaced replicas of one deployment, or of all.

        Raises:
            UnavailableError: fleet state not loaded.
        """
        await self.wait_ready()
        return PlacementsReply(
            placements=self.placements_of(request.deployment),
            unplaced=self.unplaced_of(request.deployment),
        )
