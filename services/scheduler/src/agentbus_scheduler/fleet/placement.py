"""Placement of deployment replicas onto live nodes: a pure function.

``place`` turns (deployments, live nodes, current placements) into the KV writes that
make the placements right. A node is *eligible* for a deployment when

- its runtime can run it (``docker`` needs ``image``, ``process`` needs ``command``;
  a deployment that gives both runs on either), and
- its ``labels`` include every ``node_selector`` pair.

It *has room* when one more replica keeps it within ``capacity_replicas`` and the
declared ``resources`` (``cpus``, ``memory_bytes``) of its placements within
``capacity_cpus`` / ``capacity_memory_bytes`` (0 = not limited).

Rules, in order:

1. **Minimal movement.** A placement stays while its node is alive and eligible: a
   running replica is never moved for balance alone (a node that joins gets new and
   displaced replicas, not running ones). The only moves are the documented cases:
   the node was lost (its ``<p>_nodes`` entry was deleted or expired), it became
   ineligible (labels, runtime or ``node_selector`` changed), or it is over capacity
   (its capacity was lowered or a deployment's declared resources grew): then its
   most recently placed replicas are displaced until it fits.
2. **Spread.** Every replica without a kept placement, in (deployment, replica) order,
   goes to an eligible node with room. ``spread="node"`` picks the node with the
   fewest replicas of that deployment, then the fewest replicas overall, then the
   lowest node id (deterministic), so counts per node differ by at most one when
   capacity allows. ``spread="none"`` packs: the node with the most replicas of that
   deployment, then the most replicas overall, then the lowest node id.
3. **Unplaced.** A replica no node can take stays unplaced with a reason (the filter
   that removed the last candidates) and is retried on every later pass; its old
   placement, if any, is deleted. Placements of replicas beyond ``replicas`` and of
   deleted deployments are deleted.

Greedy in-order assignment, like Kubernetes' scheduler (filter, then score) and
Nomad's spread stanza, without preemption.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agentbus.messages import Deployment, NodeInfo, Placement

_EPS = 1e-9


def placement_key(deployment: str, replica: int) -> str:
    """KV key of a replica's placement: ``<deployment>.<replica>``."""
    return f"{deployment}.{replica}"


def compatible(node: NodeInfo, deployment: Deployment) -> bool:
    """Whether ``node``'s runtime can run ``deployment``."""
    if node.runtime == "docker":
        return bool(deployment.image)
    return bool(deployment.command)


def matches(node: NodeInfo, deployment: Deployment) -> bool:
    """Whether ``node``'s labels include every ``node_selector`` pair of ``deployment``."""
    return all(node.labels.get(k) == v for k, v in deployment.node_selector.items())


@dataclass
class NodeLoad:
    """What a node's placements use: replica count and declared CPUs and memory."""

    replicas: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0

    def add(self, deployment: Deployment, sign: int = 1) -> None:
        """Count one replica of ``deployment`` in (``sign=1``) or out (``-1``)."""
        self.replicas += sign
        self.cpus += sign * deployment.resources.cpus
        self.memory_bytes += sign * deployment.resources.memory_bytes

    def shortfall(self, node: NodeInfo, deployment: Deployment | None = None) -> str | None:
        """Which capacity one more replica of ``deployment`` (None: nothing more) exceeds."""
        replicas, cpus, memory = self.replicas, self.cpus, self.memory_bytes
        if deployment is not None:
            replicas += 1
            cpus += deployment.resources.cpus
            memory += deployment.resources.memory_bytes
        if replicas > node.capacity_replicas:
            return "replicas"
        if node.capacity_cpus > 0 and cpus > node.capacity_cpus + _EPS:
            return "cpus"
        if node.capacity_memory_bytes > 0 and memory > node.capacity_memory_bytes:
            return "memory"
        return None


@dataclass(frozen=True)
class PlacementPlan:
    """The writes ``place`` asks for.

    Attributes:
        to_put: placements to write, by KV key (new or moved replicas only).
        to_delete: KV keys of placements to delete, sorted.
        unplaced: KV key -> reason, for replicas no node could take this time.
        reasons: KV key -> why, for every moved replica and deleted placement.
    """

    to_put: dict[str, Placement] = field(default_factory=dict)
    to_delete: list[str] = field(default_factory=list)
    unplaced: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        """Number of KV writes (puts and deletes) the plan asks for."""
        return len(self.to_put) + len(self.to_delete)


def _ineligible(node: NodeInfo | None, node_id: str, deployment: Deployment) -> str | None:
    if node is None:
        return f"node {node_id} lost"
    if not compatible(node, deployment):
        return f"node {node_id} ({node.runtime}) cannot run it"
    if not matches(node, deployment):
        return f"node {node_id} no longer matches node_selector"
    return None


_CAPACITY_SETTING = {
    "replicas": "SUPERVISOR_CAPACITY_REPLICAS",
    "cpus": "SUPERVISOR_CAPACITY_CPUS",
    "memory": "SUPERVISOR_CAPACITY_MEMORY_BYTES",
}
"""The supervisor setting that raises each node capacity (``NodeInfo.capacity_*``)."""
_NODES_NAMED = 3
"""Nodes named per binding limit in a no-room reason; more are counted."""


def _full_node(node: NodeInfo, load: NodeLoad, kind: str) -> str:
    """One node's binding limit, e.g. ``node a holds at most 64 replicas``."""
    if kind == "replicas":
        return f"node {node.node_id} holds at most {node.capacity_replicas} replicas"
    if kind == "cpus":
        return f"node {node.node_id} has {load.cpus:g} of {node.capacity_cpus:g} cpus declared"
    return (
        f"node {node.node_id} has {load.memory_bytes} of {node.capacity_memory_bytes} "
        "memory bytes declared"
    )


def _no_room_reason(
    deployment: Deployment, nodes: Mapping[str, NodeInfo], load: Mapping[str, NodeLoad]
) -> str:
    """Why no node takes a replica: the filter that removed the last candidates.

    When capacity is the filter, the reason names each full node's binding limit and
    the supervisor setting that raises it (``_CAPACITY_SETTING``).
    """
    if not nodes:
        return "no live node"
    runnable = [n for n in nodes.values() if compatible(n, deployment)]
    if not runnable:
        kind = "docker" if deployment.image else "process"
        return f"no live {kind} node"
    eligible = [n for n in runnable if matches(n, deployment)]
    if not eligible:
        return (
            f"no live node matches node_selector {dict(sorted(deployment.node_selector.items()))}"
        )
    full: dict[str, list[str]] = {}
    for n in sorted(eligible, key=lambda n: n.node_id):
        node_load = load.get(n.node_id, NodeLoad())
        if over := node_load.shortfall(n, deployment):
            full.setdefault(over, []).append(_full_node(n, node_load, over))
    limits = []
    for over, named in sorted(full.items()):
        more = len(named) - _NODES_NAMED
        text = ", ".join(named[:_NODES_NAMED]) + (f" and {more} more" if more > 0 else "")
        limits.append(f"{text} ({_CAPACITY_SETTING[over]})")
    reason = f"no room on {len(eligible)} eligible node(s): " + "; ".join(limits)
    r = deployment.resources
    needs = [f"{r.cpus:g} cpus"] if r.cpus else []
    needs += [f"{r.memory_bytes} memory bytes"] if r.memory_bytes else []
    return reason + (f"; one replica needs {', '.join(needs)}" if needs else "")


def place(
    deployments: Mapping[str, Deployment],
    nodes: Mapping[str, NodeInfo],
    current: Mapping[str, Placement],
    *,
    now: datetime,
) -> PlacementPlan:
    """Compute the placement writes for the desired fleet (rules in the module docstring).

    Args:
        deployments: deployment specs by name.
        nodes: live nodes by node id (a node whose entry expired is simply absent).
        current: current placements by KV key ``<deployment>.<replica>``.
        now: ``placed_at`` of new placements.

    Returns:
        The plan. Applying it and calling ``place`` again yields no writes (the same
        replicas stay unplaced until a node with room appears).
    """
    wanted = {
        placement_key(d.name, r): (d, r) for d in deployments.values() for r in range(d.replicas)
    }
    plan = PlacementPlan()
    load: dict[str, NodeLoad] = {n: NodeLoad() for n in nodes}
    per_deployment: Counter[tuple[str, str]] = Counter()
    kept: dict[str, list[tuple[str, Placement, Deployment]]] = {}
    displaced: dict[str, str] = {}  # key -> why it left its node

    for key, p in sorted(current.items()):
        target = wanted.get(key)
        if target is None:
            gone = p.deployment not in deployments
            plan.reasons[key] = "deployment deleted" if gone else "scaled down"
            plan.to_delete.append(key)
            continue
        deployment = target[0]
        why = _ineligible(nodes.get(p.node_id), p.node_id, deployment)
        if why is not None:
            displaced[key] = why
            continue
        kept.setdefault(p.node_id, []).append((key, p, deployment))
        load[p.node_id].add(deployment)
        per_deployment[(deployment.name, p.node_id)] += 1

    for node_id, items in sorted(kept.items()):
        node = nodes[node_id]
        # Newest first: the replicas that have had the least time to settle move.
        items.sort(key=lambda item: (item[1].placed_at, item[0]), reverse=True)
        for key, _, deployment in items:
            over = load[node_id].shortfall(node)
            if over is None:
                break
            displaced[key] = f"node {node_id} over {over} capacity"
            load[node_id].add(deployment, -1)
            per_deployment[(deployment.name, node_id)] -= 1

    kept_keys = {key for items in kept.values() for key, _, _ in items} - set(displaced)
    missing = sorted(
        (k for k in wanted if k not in kept_keys), key=lambda k: (wanted[k][0].name, wanted[k][1])
    )
    for key in missing:
        deployment, replica = wanted[key]
        candidates = [
            n
            for n in nodes.values()
            if compatible(n, deployment)
            and matches(n, deployment)
            and load[n.node_id].shortfall(n, deployment) is None
        ]
        if not candidates:
            plan.unplaced[key] = _no_room_reason(deployment, nodes, load)
            if key in current:
                plan.to_delete.append(key)
            continue
        sign = 1 if deployment.spread == "node" else -1
        best = min(
            candidates,
            key=lambda n: (
                sign * per_deployment[(deployment.name, n.node_id)],
                sign * load[n.node_id].replicas,
                n.node_id,
            ),
        )
        load[best.node_id].add(deployment)
        per_deployment[(deployment.name, best.node_id)] += 1
        plan.to_put[key] = Placement(
            deployment=deployment.name, replica=replica, node_id=best.node_id, placed_at=now
        )
        if key in displaced:
            plan.reasons[key] = displaced[key]
    _count_unplaced(plan, deployments)
    for key in plan.unplaced.keys() & current.keys():
        plan.reasons[key] = f"{displaced[key]}; {plan.unplaced[key]}"
    plan.to_delete.sort()
    return plan


def _count_unplaced(plan: PlacementPlan, deployments: Mapping[str, Deployment]) -> None:
    """Add ``<n> of <replicas> replicas of <name> unplaced`` to no-room reasons."""
    counts = Counter(key.rsplit(".", 1)[0] for key in plan.unplaced)
    for key, reason in plan.unplaced.items():
        if reason.startswith("no room"):
            name = key.rsplit(".", 1)[0]
            total = deployments[name].replicas
            plan.unplaced[key] = f"{reason}; {counts[name]} of {total} replicas of {name} unplaced"
