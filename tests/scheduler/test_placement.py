from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Literal

from agentbus.messages import Deployment, NodeInfo, Placement, RuntimeKind, utcnow
from agentbus.messages.fleet import Resources
from agentbus_scheduler.fleet.placement import PlacementPlan, place

NOW = utcnow()


def node(
    node_id: str,
    runtime: RuntimeKind = "docker",
    capacity: int = 64,
    *,
    labels: dict[str, str] | None = None,
    cpus: float = 0.0,
    memory_bytes: int = 0,
) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        runtime=runtime,
        started_at=NOW,
        heartbeat_at=NOW,
        labels=labels or {},
        capacity_replicas=capacity,
        capacity_cpus=cpus,
        capacity_memory_bytes=memory_bytes,
    )


def dep(
    name: str,
    replicas: int,
    *,
    image: bool = True,
    command: bool = False,
    selector: dict[str, str] | None = None,
    cpus: float = 0.0,
    memory_bytes: int = 0,
    spread: Literal["node", "none"] = "node",
) -> Deployment:
    return Deployment(
        name=name,
        replicas=replicas,
        image="agent:latest" if image else None,
        command=["python", "-m", "agent"] if command else None,
        node_selector=selector or {},
        resources=Resources(cpus=cpus, memory_bytes=memory_bytes),
        spread=spread,
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


def settle(
    deployments: dict[str, Deployment],
    nodes: dict[str, NodeInfo],
    current: dict[str, Placement] | None = None,
) -> dict[str, Placement]:
    """Apply plans until nothing is left to write (at most 3 passes: it must converge)."""
    state = dict(current or {})
    for _ in range(3):
        plan = place(deployments, nodes, state, now=NOW)
        if not plan.writes:
            return state
        state = applied(state, plan)
    raise AssertionError("placement did not converge in 3 passes")


def test_spreads_replicas_over_nodes() -> None:
    plan = place(by_name(dep("web", 4)), by_id(node("a"), node("b")), {}, now=NOW)
    assert sorted(plan.to_put) == ["web.0", "web.1", "web.2", "web.3"]
    assert plan.to_delete == []
    assert plan.unplaced == {}
    assert per_node(plan.to_put) == {"a": 2, "b": 2}
    assert {p.replica for p in plan.to_put.values()} == {0, 1, 2, 3}


def test_spread_counts_differ_by_at_most_one_for_any_size() -> None:
    nodes = by_id(node("a"), node("b"), node("c"))
    for replicas in range(1, 20):
        counts = per_node(settle(by_name(dep("web", replicas)), nodes))
        assert max(counts.values()) - min(counts.get(n, 0) for n in nodes) <= 1, counts


def test_tie_break_is_deterministic() -> None:
    nodes = [node("c"), node("a"), node("b")]
    first = place(by_name(dep("web", 1)), by_id(*nodes), {}, now=NOW)
    assert first.to_put["web.0"].node_id == "a"  # equal everywhere: lowest node id
    for _ in range(5):
        random.shuffle(nodes)
        again = place(by_name(dep("web", 5)), by_id(*nodes), {}, now=NOW)
        assert {k: p.node_id for k, p in again.to_put.items()} == {
            "web.0": "a",
            "web.1": "b",
            "web.2": "c",
            "web.3": "a",
            "web.4": "b",
        }


def test_spread_prefers_nodes_without_this_deployment() -> None:
    current = {
        f"other.{i}": Placement(deployment="other", replica=i, node_id="a", placed_at=NOW)
        for i in range(3)
    }
    deployments = by_name(dep("other", 3), dep("web", 2))
    plan = place(deployments, by_id(node("a"), node("b")), current, now=NOW)
    assert per_node(plan.to_put) == {"a": 1, "b": 1}


def test_spread_none_packs() -> None:
    nodes = by_id(node("a", capacity=3), node("b", capacity=3))
    state = settle(by_name(dep("batch", 4, spread="none")), nodes)
    assert per_node(state) == {"a": 3, "b": 1}


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
    assert plan.unplaced == {"cmd.0": "no live process node", "cmd.1": "no live process node"}
    assert place(by_name(dep("x", 1)), {}, {}, now=NOW).unplaced == {"x.0": "no live node"}


def test_node_selector() -> None:
    nodes = by_id(
        node("gpu1", labels={"gpu": "yes", "zone": "a"}),
        node("gpu2", labels={"gpu": "yes", "zone": "b"}),
        node("cpu1", labels={"zone": "a"}),
    )
    state = settle(
        by_name(dep("train", 4, selector={"gpu": "yes"}), dep("zone-a", 2, selector={"zone": "a"})),
        nodes,
    )
    train = {k: p for k, p in state.items() if p.deployment == "train"}
    assert per_node(train) == {"gpu1": 2, "gpu2": 2}
    zone_a = {k: p for k, p in state.items() if p.deployment == "zone-a"}
    assert per_node(zone_a) == {"gpu1": 1, "cpu1": 1}

    plan = place(by_name(dep("tpu", 1, selector={"tpu": "v5"})), nodes, {}, now=NOW)
    assert plan.unplaced == {"tpu.0": "no live node matches node_selector {'tpu': 'v5'}"}


def test_capacity_is_respected() -> None:
    plan = place(
        by_name(dep("web", 5)), by_id(node("a", capacity=1), node("b", capacity=2)), {}, now=NOW
    )
    assert per_node(plan.to_put) == {"a": 1, "b": 2}
    assert sorted(plan.unplaced) == ["web.3", "web.4"]
    assert (
        "node a holds at most 1 replicas, node b holds at most 2 replicas"
        in (plan.unplaced["web.3"])
    )


def test_declared_resources_against_node_capacity() -> None:
    gib = 1024**3
    nodes = by_id(
        node("big", cpus=4.0, memory_bytes=8 * gib),
        node("small", cpus=1.0, memory_bytes=1 * gib),
        node("free"),  # no declared capacity: not limited
    )
    deployments = by_name(dep("heavy", 5, cpus=2.0, memory_bytes=2 * gib, selector={}))
    state = settle(deployments, by_id(nodes["big"], nodes["small"]))
    assert per_node(state) == {"big": 2}  # 2 x 2 cpus fill big; small has 1 cpu
    plan = place(deployments, by_id(nodes["big"], nodes["small"]), state, now=NOW)
    assert sorted(plan.unplaced) == ["heavy.2", "heavy.3", "heavy.4"]
    assert "node big has 4 of 4 cpus declared" in plan.unplaced["heavy.2"]
    assert "node small has 0 of 1 cpus declared" in plan.unplaced["heavy.2"]
    assert "needs 2 cpus" in plan.unplaced["heavy.2"]

    # Memory binds before CPUs: 3 x 1 GiB into 2 GiB.
    mem = place(
        by_name(dep("m", 3, cpus=0.1, memory_bytes=gib)),
        by_id(node("n", cpus=8.0, memory_bytes=2 * gib)),
        {},
        now=NOW,
    )
    assert len(mem.to_put) == 2
    assert "(SUPERVISOR_CAPACITY_MEMORY_BYTES)" in mem.unplaced["m.2"]

    # Once a node with room joins, the rest go there and nothing else moves.
    after = settle(deployments, nodes, state)
    assert per_node(after) == {"big": 2, "free": 3}
    assert all(after[k] == state[k] for k in state)


def test_lost_node_replicas_move_and_others_stay() -> None:
    deployments = by_name(dep("web", 4))
    first = place(deployments, by_id(node("a"), node("b")), {}, now=NOW)
    current = applied({}, first)
    on_b = {k for k, p in current.items() if p.node_id == "b"}

    plan = place(deployments, by_id(node("a"), node("c")), current, now=NOW)
    assert set(plan.to_put) == on_b  # only the lost node's replicas are written
    assert per_node(plan.to_put) == {"c": 2}  # spread over the live nodes
    assert plan.to_delete == []  # moved replicas are overwritten, not deleted
    assert all(plan.reasons[k] == "node b lost" for k in on_b)


def test_new_node_gets_no_running_replicas() -> None:
    deployments = by_name(dep("web", 4))
    state = settle(deployments, by_id(node("a"), node("b")))
    plan = place(deployments, by_id(node("a"), node("b"), node("c")), state, now=NOW)
    assert plan.writes == 0  # no rebalancing of healthy placements
    scaled = place(by_name(dep("web", 6)), by_id(node("a"), node("b"), node("c")), state, now=NOW)
    assert per_node(scaled.to_put) == {"c": 2}  # new replicas go to the emptiest node


def test_lost_node_without_replacement_deletes_placement() -> None:
    current = {"cmd.0": Placement(deployment="cmd", replica=0, node_id="gone", placed_at=NOW)}
    plan = place(
        by_name(dep("cmd", 1, image=False, command=True)), by_id(node("d")), current, now=NOW
    )
    assert plan.to_delete == ["cmd.0"]
    assert plan.unplaced == {"cmd.0": "no live process node"}
    assert plan.reasons["cmd.0"].startswith("node gone lost")


def test_scale_down_and_deleted_deployment() -> None:
    nodes = by_id(node("a"), node("b"))
    current = applied({}, place(by_name(dep("web", 4), dep("old", 2)), nodes, {}, now=NOW))
    plan = place(by_name(dep("web", 2)), nodes, current, now=NOW)
    assert plan.to_put == {}
    assert plan.to_delete == ["old.0", "old.1", "web.2", "web.3"]
    assert plan.reasons == {
        "old.0": "deployment deleted",
        "old.1": "deployment deleted",
        "web.2": "scaled down",
        "web.3": "scaled down",
    }


def test_incompatible_after_spec_change_moves() -> None:
    nodes = by_id(node("d", "docker"), node("p", "process"))
    current = {"x.0": Placement(deployment="x", replica=0, node_id="d", placed_at=NOW)}
    plan = place(by_name(dep("x", 1, image=False, command=True)), nodes, current, now=NOW)
    assert plan.to_put["x.0"].node_id == "p"
    assert plan.to_delete == []


def test_selector_change_moves_only_ineligible_replicas() -> None:
    nodes = by_id(node("a", labels={"tier": "web"}), node("b"), node("c", labels={"tier": "web"}))
    state = settle(by_name(dep("web", 3)), nodes)
    assert per_node(state) == {"a": 1, "b": 1, "c": 1}
    plan = place(by_name(dep("web", 3, selector={"tier": "web"})), nodes, state, now=NOW)
    moved = {k for k, p in state.items() if p.node_id == "b"}
    assert set(plan.to_put) == moved
    assert {p.node_id for p in plan.to_put.values()} <= {"a", "c"}
    assert plan.reasons[next(iter(moved))] == "node b no longer matches node_selector"


def test_lowered_capacity_sheds_newest_placements() -> None:
    older, newer = NOW - timedelta(minutes=5), NOW
    current = {
        f"web.{i}": Placement(
            deployment="web", replica=i, node_id="a", placed_at=older if i < 2 else newer
        )
        for i in range(4)
    }
    nodes = by_id(node("a", capacity=2), node("b"))
    plan = place(by_name(dep("web", 4)), nodes, current, now=NOW)
    assert set(plan.to_put) == {"web.2", "web.3"}  # the newest two move
    assert all(p.node_id == "b" for p in plan.to_put.values())
    assert plan.reasons["web.2"] == "node a over replicas capacity"


def test_grown_resources_shed_until_node_fits() -> None:
    nodes = by_id(node("a", cpus=2.0), node("b", cpus=2.0))
    state = settle(by_name(dep("web", 4, cpus=0.5)), nodes)
    assert per_node(state) == {"a": 2, "b": 2}
    plan = place(by_name(dep("web", 4, cpus=1.5)), nodes, state, now=NOW)
    # Each node now fits one 1.5-cpu replica: one per node stays, two are unplaced.
    after = applied(state, plan)
    assert per_node(after) == {"a": 1, "b": 1}
    assert len(plan.unplaced) == 2
    assert place(by_name(dep("web", 4, cpus=1.5)), nodes, after, now=NOW).writes == 0


def test_no_room_reason_names_the_limit_and_its_setting() -> None:
    """100 replicas onto one 64-replica node: the reason says which limit binds and
    which supervisor setting raises it, and how many replicas are left out."""
    plan = place(by_name(dep("web", 100)), by_id(node("embedded-1")), {}, now=NOW)
    assert len(plan.to_put) == 64
    assert len(plan.unplaced) == 36
    assert plan.unplaced["web.64"] == (
        "no room on 1 eligible node(s): node embedded-1 holds at most 64 replicas "
        "(SUPERVISOR_CAPACITY_REPLICAS); 36 of 100 replicas of web unplaced"
    )
    assert len(set(plan.unplaced.values())) == 1
    # Declared resources: the node's total, what is declared, and the setting.
    cpu = place(by_name(dep("heavy", 3, cpus=1.5)), by_id(node("n1", cpus=2.0)), {}, now=NOW)
    assert cpu.unplaced["heavy.1"] == (
        "no room on 1 eligible node(s): node n1 has 1.5 of 2 cpus declared "
        "(SUPERVISOR_CAPACITY_CPUS); one replica needs 1.5 cpus; "
        "2 of 3 replicas of heavy unplaced"
    )
    gib = 1024**3
    mem = place(
        by_name(dep("m", 2, memory_bytes=gib)),
        by_id(node("n2", memory_bytes=gib), node("n3", memory_bytes=gib // 2)),
        {},
        now=NOW,
    )
    assert mem.unplaced["m.1"] == (
        "no room on 2 eligible node(s): node n2 has 1073741824 of 1073741824 memory bytes "
        "declared, node n3 has 0 of 536870912 memory bytes declared "
        "(SUPERVISOR_CAPACITY_MEMORY_BYTES); one replica needs 1073741824 memory bytes; "
        "1 of 2 replicas of m unplaced"
    )
