from __future__ import annotations

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.errors import ContractError, NotFoundError
from agentbus.kv.lease import LeaseRecord
from agentbus.messages import (
    Deployment,
    DeployReply,
    ListPlacements,
    NodeInfo,
    PlacementEvent,
    PlacementsReply,
    ScaleDeployment,
    encode,
    utcnow,
)
from tests._harness.fleet import Heartbeats, heartbeats, per_node, read_placements
from tests._harness.polling import eventually
from tests._harness.services import Scheduler

__all__ = ["heartbeats"]  # the fixture


async def test_deploy_places_replicas(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    await heartbeats.add("n1")
    await heartbeats.add("n2")
    await heartbeats.add("p1", runtime="process")

    async def nodes_seen() -> bool:
        reply = await scheduler.client.deploy(Deployment(name="probe", replicas=3, image="x"))
        return len(reply.placements) == 3

    await eventually(nodes_seen, what="scheduler sees the nodes")
    await scheduler.client.delete_deployment("probe")

    reply = await scheduler.client.deploy(Deployment(name="web", replicas=4, image="agent:1"))
    assert reply.deployment.name == "web"
    assert [p.replica for p in reply.placements] == [0, 1, 2, 3]
    assert per_node(reply.placements) == {"n1": 2, "n2": 2}

    stored = await read_placements(bus)
    assert {k for k in stored if k.startswith("web.")} == {"web.0", "web.1", "web.2", "web.3"}
    kv = await bus.kv(bus.names.deployments_bucket)
    entry = await kv.get("web")
    assert entry.value is not None
    assert msgspec.json.decode(entry.value, type=Deployment).image == "agent:1"

    # Scale down, then delete.
    reply = await scheduler.client.deploy(Deployment(name="web", replicas=1, image="agent:1"))
    assert [p.replica for p in reply.placements] == [0]
    assert set(await read_placements(bus)) == {"web.0"}
    reply = await scheduler.client.delete_deployment("web")
    assert reply.placements == []
    assert await read_placements(bus) == {}
    with pytest.raises(NotFoundError):
        await scheduler.client.delete_deployment("web")


async def test_deploy_validates(bus: Bus, scheduler: Scheduler) -> None:
    with pytest.raises(ContractError, match="image or a command"):
        await scheduler.client.deploy(Deployment(name="empty"))
    with pytest.raises(ContractError):
        await scheduler.client.deploy(Deployment(name="x", image="i", capabilities=["Not Ok"]))
    kv = await bus.kv(bus.names.deployments_bucket)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get("empty")


@pytest.mark.timeout(60)
async def test_lost_node_replicas_move(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    await heartbeats.add("n1")
    await heartbeats.add("n2")

    async def spread() -> bool:
        reply = await scheduler.client.deploy(Deployment(name="web", replicas=4, image="i"))
        return per_node(reply.placements) == {"n1": 2, "n2": 2}

    await eventually(spread, what="replicas spread over both nodes")
    before = await read_placements(bus)
    kept = {k for k, p in before.items() if p.node_id == "n1"}

    await heartbeats.remove("n2")

    async def moved() -> bool:
        return per_node(await read_placements(bus)) == {"n1": 4}

    await eventually(moved, what="replicas moved off the lost node")
    after = await read_placements(bus)
    assert all(after[k] == before[k] for k in kept)  # untouched replicas stay put


@pytest.mark.timeout(60)
async def test_unplaced_replicas_wait_for_a_node(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    reply = await scheduler.client.deploy(
        Deployment(name="worker", replicas=2, command=["python", "-m", "agentbus.agents.echo"])
    )
    assert reply.placements == []

    def unplaced_gauge() -> bool:
        return scheduler.metric("agentbus_scheduler_unplaced_replicas") == 2

    await eventually(unplaced_gauge, what="unplaced gauge")

    await heartbeats.add("docker-only")  # incompatible: stays unplaced
    await heartbeats.add("proc", runtime="process")

    async def placed() -> bool:
        return per_node(await read_placements(bus)) == {"proc": 2}

    await eventually(placed, what="replicas placed on the new process node")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_expired_heartbeat_moves_replicas(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    await heartbeats.add("alive")
    # A node that heartbeats once: its entry expires after the registry TTL (~10 s).
    now = utcnow()
    silent = NodeInfo(node_id="silent", runtime="docker", started_at=now, heartbeat_at=now)
    kv = await bus.kv(bus.names.nodes_bucket)
    await kv.put("silent", encode(silent))

    async def spread() -> bool:
        reply = await scheduler.client.deploy(Deployment(name="web", replicas=2, image="i"))
        return per_node(reply.placements) == {"alive": 1, "silent": 1}

    await eventually(spread, what="replicas on both nodes")

    async def moved() -> bool:
        return per_node(await read_placements(bus)) == {"alive": 2}

    await eventually(moved, timeout_s=30, what="replicas moved off the expired node")


class PlacementEvents:
    def __init__(self) -> None:
        self.events: list[PlacementEvent] = []

    async def start(self, bus: Bus) -> None:
        async def _on(msg: Msg) -> None:
            self.events.append(msgspec.json.decode(msg.data, type=PlacementEvent))

        await bus.nc.subscribe(bus.names.events_all("placement"), cb=_on)
        await bus.nc.flush()

    def of(self, kind: str) -> list[PlacementEvent]:
        return [e for e in self.events if e.kind == kind]


async def _placements(bus: Bus, deployment: str | None = None) -> PlacementsReply:
    return await bus.request(
        bus.names.endpoint("scheduler", "placements"),
        ListPlacements(deployment=deployment),
        PlacementsReply,
    )


@pytest.mark.timeout(60)
async def test_unplaced_reported_then_placed_with_events(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    events = PlacementEvents()
    await events.start(bus)
    await heartbeats.add("plain")
    spec = Deployment(name="gpu", replicas=2, image="i", node_selector={"gpu": "yes"})
    assert (await scheduler.client.deploy(spec)).change == "created"

    async def selector_blocks() -> DeployReply | None:
        reply = await scheduler.client.deploy(spec)
        return reply if reply.unplaced and "selector" in reply.unplaced[0].reason else None

    reply = await eventually(selector_blocks, what="scheduler sees the unlabelled node")
    assert reply.change == "unchanged"
    assert reply.placements == []
    assert [(u.replica, u.reason) for u in reply.unplaced] == [
        (0, "no live node matches node_selector {'gpu': 'yes'}"),
        (1, "no live node matches node_selector {'gpu': 'yes'}"),
    ]
    listed = await _placements(bus, "gpu")
    assert listed.unplaced == reply.unplaced
    await eventually(lambda: len(events.of("unplaced")) == 2, what="unplaced events")
    assert scheduler.metric("agentbus_scheduler_unplaced_replicas") == 2

    await heartbeats.add("gpu-node", labels={"gpu": "yes"})

    async def placed() -> bool:
        return per_node(await read_placements(bus)) == {"gpu-node": 2}

    await eventually(placed, what="replicas placed on the labelled node")
    await eventually(lambda: len(events.of("placed")) == 2, what="placed events")
    assert {e.node_id for e in events.of("placed")} == {"gpu-node"}
    lease = await (await bus.kv(bus.names.leases_bucket)).get("scheduler-placement")
    holder = msgspec.json.decode(lease.value or b"", type=LeaseRecord).holder
    assert {e.scheduler_id for e in events.events} == {holder}
    assert (await _placements(bus, "gpu")).unplaced == []


@pytest.mark.timeout(60)
async def test_moved_events_name_the_lost_node(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    events = PlacementEvents()
    await events.start(bus)
    await heartbeats.add("n1")
    await heartbeats.add("n2")

    async def spread() -> bool:
        reply = await scheduler.client.deploy(Deployment(name="web", replicas=4, image="i"))
        return per_node(reply.placements) == {"n1": 2, "n2": 2}

    await eventually(spread, what="replicas spread over both nodes")
    await heartbeats.remove("n2")
    await eventually(lambda: len(events.of("moved")) == 2, what="moved events")
    for e in events.of("moved"):
        assert (e.previous_node_id, e.node_id, e.reason) == ("n2", "n1", "node n2 lost")


async def test_scale_and_list_placements(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    await heartbeats.add("n1")

    async def placed() -> bool:
        reply = await scheduler.client.deploy(Deployment(name="web", replicas=1, image="i"))
        return len(reply.placements) == 1

    await eventually(placed, what="scheduler sees the node")
    scale = bus.names.endpoint("scheduler", "scale")
    reply = await bus.request(scale, ScaleDeployment(name="web", replicas=3), DeployReply)
    assert (reply.change, reply.deployment.replicas) == ("updated", 3)
    assert [p.replica for p in reply.placements] == [0, 1, 2]
    reply = await bus.request(scale, ScaleDeployment(name="web", replicas=3), DeployReply)
    assert reply.change == "unchanged"
    listed = await _placements(bus)
    assert [(p.deployment, p.replica) for p in listed.placements] == [
        ("web", 0),
        ("web", 1),
        ("web", 2),
    ]
    with pytest.raises(NotFoundError):
        await bus.request(scale, ScaleDeployment(name="nope", replicas=1), DeployReply)


async def test_scaling_a_corrupt_stored_spec_is_a_typed_error(
    bus: Bus, scheduler: Scheduler
) -> None:
    kv = await bus.kv(bus.names.deployments_bucket)
    await kv.put("broken", b'{"type": "Deployment", "name": "broken", "replicas": "many"}')
    scale = bus.names.endpoint("scheduler", "scale")
    with pytest.raises(ContractError, match="stored spec does not decode"):
        await bus.request(scale, ScaleDeployment(name="broken", replicas=2), DeployReply)
    # The scheduler still serves requests.
    with pytest.raises(NotFoundError):
        await bus.request(scale, ScaleDeployment(name="nope", replicas=1), DeployReply)
