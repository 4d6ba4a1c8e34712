"""The fleet state every scheduler instance mirrors, and what placement makes of it.

Every instance mirrors KV ``<p>_deployments`` (``Deployment``, key = name),
``<p>_nodes`` (``NodeInfo``: supervisor heartbeats that expire by TTL) and
``<p>_placements`` (``Placement``, key ``<deployment>.<replica>``) in memory
(``agentbus.kv.mirror.KvMirror``). ``dirty`` is set by every change placement looks
at: a deployment or placement change, a node joining, leaving or changing its
labels, runtime or capacity (not a mere heartbeat). Unplaced replicas are a pure
function of this state (``placement.place``), so any instance reports them.
"""

from __future__ import annotations

import asyncio
import functools

from agentbus.errors import UnavailableError
from agentbus.kv.mirror import KvMirror
from agentbus.messages import Deployment, NodeInfo, Placement, UnplacedReplica, utcnow
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.fleet.placement import PlacementPlan, place


def node_changed(old: NodeInfo | None, new: NodeInfo | None) -> bool:
    """A node joined, left, or changed what placement looks at (not a mere heartbeat)."""
    if old is None or new is None:
        return old is not new

    def shape(n: NodeInfo) -> tuple[object, ...]:
        return (n.runtime, n.labels, n.capacity_replicas, n.capacity_cpus, n.capacity_memory_bytes)

    return shape(old) != shape(new)


def replica_of(key: str) -> tuple[str, int]:
    """``(deployment, replica)`` of placement key ``<deployment>.<replica>``."""
    name, _, replica = key.rpartition(".")
    return name, int(replica)


class FleetState:
    """The three mirrors, their readiness and the placement plan they imply.

    Attributes:
        deployments: the mirror of ``<p>_deployments``.
        nodes: the mirror of ``<p>_nodes``.
        placements: the mirror of ``<p>_placements``.
        dirty: set when a change placement looks at arrived (cleared by the placer).
    """

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        names = ctx.bus.names
        self.dirty = asyncio.Event()
        mirror = functools.partial(
            KvMirror, ctx.bus, service_metrics=ctx.service_metrics, on_change=self.dirty.set
        )
        self.deployments = mirror(names.deployments_bucket, Deployment, source="deployments")
        self.nodes = mirror(names.nodes_bucket, NodeInfo, source="nodes", significant=node_changed)
        self.placements = mirror(names.placements_bucket, Placement, source="placements")
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the three mirrors."""
        for mirror in (self.deployments, self.nodes, self.placements):
            run = mirror.run(self._stop)
            self._tasks.append(asyncio.create_task(run, name=f"mirror {mirror.bucket}"))

    async def close(self) -> None:
        """Stop the mirrors."""
        self._stop.set()
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
            async with asyncio.timeout(self.ctx.settings.ready_timeout_s):
                for mirror in (self.deployments, self.nodes, self.placements):
                    await mirror.ready.wait()
        except TimeoutError as exc:
            raise UnavailableError("the scheduler has not loaded the fleet state yet") from exc

    def plan(self) -> PlacementPlan:
        """What placement would write now, from the mirrors (no writes; any instance)."""
        return place(
            self.deployments.values, self.nodes.values, self.placements.values, now=utcnow()
        )

    def placements_of(self, name: str | None) -> list[Placement]:
        """Current placements of deployment ``name`` (None: all), by deployment and replica."""
        found = [p for p in self.placements.values.values() if name is None or p.deployment == name]
        return sorted(found, key=lambda p: (p.deployment, p.replica))

    def unplaced_of(self, name: str | None) -> list[UnplacedReplica]:
        """Replicas of ``name`` (None: all) that no node can take now, with the reason."""
        found = []
        for key, reason in self.plan().unplaced.items():
            deployment, replica = replica_of(key)
            if name is None or deployment == name:
                found.append(UnplacedReplica(deployment=deployment, replica=replica, reason=reason))
        return sorted(found, key=lambda u: (u.deployment, u.replica))
