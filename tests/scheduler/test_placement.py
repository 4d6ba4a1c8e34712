from __future__ import annotations

from collections import Counter

from agentbus.messages import Deployment, NodeInfo, Placement, RuntimeKind, utcnow
from agentbus_scheduler.placement import PlacementPlan, place

NOW = utcnow()


def node(node_id: str, runtime: RuntimeKind = "docker", capacity: int = 64) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        runtime=runtime,
        started_at=NOW,
        heartbeat_at=NOW,
        capacity_replicas=capacity,
    )


def dep(name: str, replicas: int, *, image: bool = True, command: bool = False) -> Deployment:
    return Deployment(
        name=name,
        replicas=replicas,
        image="agent:latest" if image else None,
        command=["python", "-m", "agent"] if command else None,
    )


def by_name(*items: Deployment) -> dict[str, Deployment]:
    return {d.name: d for d in items}


def by_id(*items: NodeInfo) -> dict[str, NodeInfo]:
    return {n.node_id: n for n in items}


def applied(current: dict[str, Placement], plan: PlacementPlan) -> dict[str, Placement]:
    result = {k: v for k, v in current.items() if k not in plan.to_delete}
    result.update(plan.to_put)
    return result


def per_node(placements: dict[str, Placement]) -> Counter[str]:
    return Counter(p.node_id for p in placements.values())


def test_spreads_replicas_over_nodes() -> None:
    plan = place(by_name(dep("web", 4)), by_id(node("a"), node("b")), {}, now=NOW)
    assert sorted(plan.to_put) == ["web.0", "web.1", "web.2", "web.3"]
    assert plan.to_delete == []
    assert plan.unplaced == []
    assert per_node(plan.to_put) == {"a": 2, "b": 2}
    assert {p.replica for p in plan.to_put.values()} == {0, 1, 2, 3}


def test_spread_prefers_nodes_without_this_deployment() -> None:
    current = {
        f"other.{i}": Placement(deployment="other", replica=i, node_id="a", placed_at=NOW)
        for i in range(3)
    }
    deployments = by_name(dep("other", 3), dep("web", 2))
    plan = place(deployments, by_id(node("a"), node("b")), current, now=NOW)
    assert per_node(plan.to_put) == {"a": 1, "b": 1}


def test_is_stable_once_applied() -> None:
    deployments = by_name(dep("web", 3), dep("worker", 2, image=False, command=True))
    nodes = by_id(node("a"), node("b"), node("p", "process"))
    plan = place(deployments, nodes, {}, now=NOW)
    again = place(deployments, nodes, applied({}, plan), now=NOW)
    assert again == PlacementPlan()


def test_runtime_compatibility() -> None:
    nodes = by_id(node("d", "docker"), node("p", "process"))
    plan = place(
        by_name(
            dep("img", 2),
            dep("cmd", 2, image=False, command=True),
            dep("both", 4, command=True),
        ),
        nodes,
        {},
        now=NOW,
    )
    assert {p.node_id for p in plan.to_put.values() if p.deployment == "img"} == {"d"}
    assert {p.node_id for p in plan.to_put.values() if p.deployment == "cmd"} == {"p"}
    assert per_node({k: v for k, v in plan.to_put.items() if k.startswith("both.")}) == {
        "d": 2,
        "p": 2,
    }


def test_no_compatible_node_leaves_replicas_unplaced() -> None:
    plan = place(by_name(dep("cmd", 2, image=False, command=True)), by_id(node("d")), {}, now=NOW)
    assert plan.to_put == {}
    assert plan.unplaced == ["cmd.0", "cmd.1"]


def test_capacity_is_respected() -> None:
    plan = place(
        by_name(dep("web", 5)), by_id(node("a", capacity=1), node("b", capacity=2)), {}, now=NOW
    )
    assert per_node(plan.to_put) == {"a": 1, "b": 2}
    assert len(plan.unplaced) == 2


def test_lost_node_replicas_move_and_others_stay() -> None:
    deployments = by_name(dep("web", 4))
    first = place(deployments, by_id(node("a"), node("b")), {}, now=NOW)
    current = applied({}, first)
    on_b = {k for k, p in current.items() if p.node_id == "b"}

    plan = place(deployments, by_id(node("a")), current, now=NOW)
    assert set(plan.to_put) == on_b  # only the lost node's replicas are written
    assert all(p.node_id == "a" for p in plan.to_put.values())
    assert plan.to_delete == []  # moved replicas are overwritten, not deleted


def test_lost_node_without_replacement_deletes_placement() -> None:
    current = {"cmd.0": Placement(deployment="cmd", replica=0, node_id="gone", placed_at=NOW)}
    plan = place(
        by_name(dep("cmd", 1, image=False, command=True)), by_id(node("d")), current, now=NOW
    )
    assert plan.to_delete == ["cmd.0"]
    assert plan.unplaced == ["cmd.0"]


def test_scale_down_and_deleted_deployment() -> None:
    nodes = by_id(node("a"), node("b"))
    current = applied({}, place(by_name(dep("web", 4), dep("old", 2)), nodes, {}, now=NOW))
    plan = place(by_name(dep("web", 2)), nodes, current, now=NOW)
    assert plan.to_put == {}
    assert plan.to_delete == ["old.0", "old.1", "web.2", "web.3"]


def test_incompatible_after_spec_change_moves() -> None:
    nodes = by_id(node("d", "docker"), node("p", "process"))
    current = {"x.0": Placement(deployment="x", replica=0, node_id="d", placed_at=NOW)}
    plan = place(by_name(dep("x", 1, image=False, command=True)), nodes, current, now=NOW)
    assert plan.to_put["x.0"].node_id == "p"
    assert plan.to_delete == []
