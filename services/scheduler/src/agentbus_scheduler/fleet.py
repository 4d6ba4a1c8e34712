"""Deployments and the placement loop: the KV glue around ``placement.place``.

The scheduler mirrors KV ``<p>_deployments``, ``<p>_nodes`` (supervisor heartbeats
that expire by TTL) and ``<p>_placements`` in memory through KV watchers, re-places
on every deployment change, node join/loss or foreign placement change, and at least
every ``place_interval_s``, and writes the difference to ``<p>_placements``.
Supervisors watch that bucket and start or stop the replicas placed on their node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import nats.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import ContractError, NotFoundError, UnavailableError
from agentbus.messages import (
    DeleteDeployment,
    Deploy,
    Deployment,
    DeployReply,
    NodeInfo,
    Placement,
    encode,
    utcnow,
)
from agentbus.names import check_token
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.placement import PlacementPlan, place
from agentbus_scheduler.settings import SchedulerSettings

T = TypeVar("T", bound=msgspec.Struct)


class KvMirror(Generic[T]):
    """An in-memory copy of one KV bucket, kept current by a watcher.

    Entries are applied only if their revision is newer than the one known for the
    key, so the owner can apply its own writes at once without a stale watch update
    undoing them. ``ready`` is set after the initial replay.
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        type_: type[T],
        service_metrics: ServiceMetrics,
        *,
        on_change: Callable[[], None],
        significant: Callable[[T | None, T | None], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self.values: dict[str, T] = {}
        self.ready = asyncio.Event()
        self._revisions: dict[str, int] = {}
        self._decoder = msgspec.json.Decoder(type_)
        self._service_metrics = service_metrics
        self._on_change = on_change
        self._significant = significant or (lambda old, new: old != new)

    def apply(self, key: str, revision: int, value: T | None) -> bool:
        """Apply a put (``value``) or delete (None) at ``revision``; True if significant."""
        if revision <= self._revisions.get(key, 0):
            return False
        self._revisions[key] = revision
        old = self.values.get(key)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return self._significant(old, value)

    def forget(self, key: str) -> None:
        """Drop ``key`` after the owner deleted it (the delete's revision is unknown)."""
        self.values.pop(key, None)

    async def run(self) -> None:
        """Follow the bucket until cancelled; re-watches after an error."""
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (task := asyncio.current_task()) and task.cancelling():
                    # Python 3.11's wait_for inside nats-py can turn our cancel into an error.
                    raise asyncio.CancelledError from exc
                logger.warning("kv watch failed", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        kv = await self.bus.kv(self.bucket)
        watcher = await kv.watchall()
        seen: set[str] | None = set()  # keys of the initial replay; None once live
        try:
            async for entry in watcher:
                if entry is None:
                    if seen is not None:
                        for key in [k for k in self.values if k not in seen]:
                            self.values.pop(key, None)  # deleted while we were not watching
                        seen = None
                    self.ready.set()
                    self._on_change()
                    continue
                if seen is not None:
                    seen.add(entry.key)
                value: T | None = None
                if entry.operation is None and entry.value:
                    try:
                        value = self._decoder.decode(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await report_bad_message(
                            self.bus,
                            self._service_metrics,
                            source=self.bucket,
                            subject=entry.key,
                            reason=f"KV entry does not decode: {exc}",
                        )
                if self.apply(entry.key, entry.revision or 0, value) and seen is None:
                    self._on_change()
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:
                logger.debug("kv watcher stop failed", bucket=self.bucket, error=repr(exc))


def _node_changed(old: NodeInfo | None, new: NodeInfo | None) -> bool:
    """A node joined, left, or changed what placement looks at (not a mere heartbeat)."""
    if old is None or new is None:
        return old is not new
    return (old.runtime, old.capacity_replicas, old.labels) != (
        new.runtime,
        new.capacity_replicas,
        new.labels,
    )


def validate_deployment(deployment: Deployment) -> None:
    """Check a deployment spec beyond what its type enforces.

    Raises:
        ContractError: bad name or capability token, or neither image nor command.
    """
    check_token("deployment name", deployment.name)
    if not deployment.image and not deployment.command:
        raise ContractError(f"deployment {deployment.name!r} needs an image or a command")
    for capability in deployment.capabilities:
        check_token("capability", capability)


class Fleet:
    """Handlers of ``deploy`` and ``delete`` plus the placement loop."""

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
        self.deployments = KvMirror(
            bus, names.deployments_bucket, Deployment, service_metrics, on_change=self._dirty.set
        )
        self.nodes = KvMirror(
            bus,
            names.nodes_bucket,
            NodeInfo,
            service_metrics,
            on_change=self._dirty.set,
            significant=_node_changed,
        )
        self.placements = KvMirror(
            bus, names.placements_bucket, Placement, service_metrics, on_change=self._dirty.set
        )
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._unplaced: list[str] = []

    async def start(self) -> None:
        """Start the three KV mirrors."""
        for mirror in (self.deployments, self.nodes, self.placements):
            self._tasks.append(asyncio.create_task(mirror.run(), name=f"mirror {mirror.bucket}"))

    async def close(self) -> None:
        """Stop the mirrors."""
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

    async def run(self, stop: asyncio.Event) -> None:
        """Re-place on every change and every ``place_interval_s`` until ``stop``."""
        while not stop.is_set():
            try:
                await self.wait_ready()
                break
            except UnavailableError:
                logger.warning("waiting for the fleet state")
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    await self.place_once()
                except (nats.errors.Error, TimeoutError, UnavailableError) as exc:
                    logger.warning("placement pass failed", error=repr(exc))
                except Exception:
                    logger.exception("placement pass failed")
                waiter = asyncio.create_task(self._dirty.wait())
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.settings.place_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
        finally:
            stopper.cancel()

    async def place_once(self) -> PlacementPlan:
        """Compute placements from the mirrors and write the difference.

        Raises:
            nats.errors.Error: a KV write failed (the next pass retries).
        """
        async with self._lock:
            self._dirty.clear()
            self.metrics.placement_passes.inc()
            plan = place(
                self.deployments.values, self.nodes.values, self.placements.values, now=utcnow()
            )
            kv = await self.bus.kv(self.bus.names.placements_bucket)
            for key, placement in plan.to_put.items():
                revision = await kv.put(key, encode(placement))
                self.placements.apply(key, revision, placement)
                self.metrics.placement_writes.labels("put").inc()
                logger.info(
                    "replica placed",
                    deployment=placement.deployment,
                    replica=placement.replica,
                    node_id=placement.node_id,
                )
            for key in plan.to_delete:
                await kv.delete(key)
                self.placements.forget(key)
                self.metrics.placement_writes.labels("delete").inc()
                logger.info("placement removed", key=key)
            self.metrics.unplaced.set(len(plan.unplaced))
            if plan.unplaced != self._unplaced:
                if plan.unplaced:
                    logger.warning(
                        "replicas unplaced: no live compatible node with capacity",
                        replicas=plan.unplaced,
                    )
                self._unplaced = plan.unplaced
            return plan

    def placements_of(self, name: str) -> list[Placement]:
        """Current placements of deployment ``name``, by replica."""
        found = [p for p in self.placements.values.values() if p.deployment == name]
        return sorted(found, key=lambda p: p.replica)

    async def deploy(self, request: Deploy) -> DeployReply:
        """Store a deployment spec, place it once and reply with its placements.

        Raises:
            ContractError: invalid spec.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        deployment = request.deployment
        validate_deployment(deployment)
        await self.wait_ready()
        kv = await self.bus.kv(self.bus.names.deployments_bucket)
        try:
            revision = await kv.put(deployment.name, encode(deployment))
            self.deployments.apply(deployment.name, revision, deployment)
            await self.place_once()
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not store deployment: {exc!r}") from exc
        logger.info("deployment stored", deployment=deployment.name, replicas=deployment.replicas)
        return DeployReply(deployment=deployment, placements=self.placements_of(deployment.name))

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
            await self.place_once()
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not delete deployment: {exc!r}") from exc
        logger.info("deployment deleted", deployment=request.name)
        return DeployReply(deployment=deployment, placements=self.placements_of(request.name))
