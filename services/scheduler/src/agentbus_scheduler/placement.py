"""Placement of deployment replicas onto live nodes: a pure function.

``place`` turns (deployments, live nodes, current placements) into the KV writes that
make the placements right. Rules, in order:

1. A replica keeps its placement while its node is alive and compatible, so a
   running replica is never moved for balance alone.
2. Every other replica ``0..replicas-1`` goes to a live compatible node with capacity
   left, preferring the node with the fewest replicas of the same deployment
   (spread), then the fewest replicas overall, then the node id (determinism).
3. Placements of replicas beyond ``replicas``, of deleted deployments and of lost or
   incompatible nodes are deleted; a replica no node can take stays unplaced and is
   retried on the next pass.

A node is compatible when it can run the deployment: runtime ``docker`` needs
``image``, runtime ``process`` needs ``command``. A node takes at most
``capacity_replicas`` placements (kept placements over capacity stay where they are).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agentbus.messages import Deployment, NodeInfo, Placement


def placement_key(deployment: str, replica: int) -> str:
    """KV key of a replica's placement: ``<deployment>.<replica>``."""
    return f"{deployment}.{replica}"


def compatible(node: NodeInfo, deployment: Deployment) -> bool:
    """Whether ``node``'s runtime can run ``deployment``."""
    if node.runtime == "docker":
        return bool(deployment.image)
    return bool(deployment.command)


@dataclass(frozen=True)
class PlacementPlan:
    """The writes ``place`` asks for.

    Attributes:
        to_put: placements to write, by KV key (new or moved replicas only).
        to_delete: KV keys of placements to delete.
        unplaced: KV keys of replicas that no node could take this time.
    """

    to_put: dict[str, Placement] = field(default_factory=dict)
    to_delete: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


def place(
    deployments: Mapping[str, Deployment],
    nodes: Mapping[str, NodeInfo],
    current: Mapping[str, Placement],
    *,
    now: datetime,
) -> PlacementPlan:
    """Compute the placement writes for the desired fleet.

    Args:
        deployments: deployment specs by name.
        nodes: live nodes by node id (an expired heartbeat is simply absent).
        current: current placements by KV key ``<deployment>.<replica>``.
        now: ``placed_at`` of new placements.

    Returns:
        The plan; applying it and calling ``place`` again yields an empty plan
        (except for replicas still unplaced).
    """
    wanted = {
        placement_key(d.name, r): (d, r) for d in deployments.values() for r in range(d.replicas)
    }
    load: Counter[str] = Counter()
    per_deployment: Counter[tuple[str, str]] = Counter()
    plan = PlacementPlan()
    missing: list[tuple[str, Deployment, int]] = []

    for key, placement in current.items():
        target = wanted.get(key)
        node = nodes.get(placement.node_id)
        if target is not None and node is not None and compatible(node, target[0]):
            load[node.node_id] += 1
            per_deployment[(target[0].name, node.node_id)] += 1
        else:
            plan.to_delete.append(key)
    dropped = set(plan.to_delete)
    for key, (deployment, replica) in wanted.items():
        if key not in current or key in dropped:
            missing.append((key, deployment, replica))

    for key, deployment, replica in sorted(missing, key=lambda m: (m[1].name, m[2])):
        candidates = [
            n
            for n in nodes.values()
            if compatible(n, deployment) and load[n.node_id] < n.capacity_replicas
        ]
        if not candidates:
            plan.unplaced.append(key)
            continue
        best = min(
            candidates,
            key=lambda n: (
                per_deployment[(deployment.name, n.node_id)],
                load[n.node_id],
                n.node_id,
            ),
        )
        load[best.node_id] += 1
        per_deployment[(deployment.name, best.node_id)] += 1
        plan.to_put[key] = Placement(
            deployment=deployment.name, replica=replica, node_id=best.node_id, placed_at=now
        )
    # A moved replica is overwritten, not deleted then re-created.
    plan.to_delete[:] = sorted(k for k in plan.to_delete if k not in plan.to_put)
    return plan
