from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.errors import ContractError, NotFoundError
from agentbus.messages import Deployment, NodeInfo, Placement, RuntimeKind, encode, utcnow
from tests._helpers import eventually
from tests.scheduler.conftest import Scheduler


class Heartbeats:
    """Keeps fake supervisor heartbeats alive in KV ``<p>_nodes`` (entries have a TTL)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.nodes: dict[str, NodeInfo] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(self, node_id: str, runtime: RuntimeKind = "docker", capacity: int = 64) -> None:
        now = utcnow()
        info = NodeInfo(
            node_id=node_id,
            runtime=runtime,
            started_at=now,
            heartbeat_at=now,
            capacity_replicas=capacity,
        )
        self.nodes[node_id] = info
        await self._put(info)

    async def remove(self, node_id: str) -> None:
        del self.nodes[node_id]
        kv = await self.bus.kv(self.bus.names.nodes_bucket)
        await kv.delete(node_id)

    async def _put(self, info: NodeInfo) -> None:
        kv = await self.bus.kv(self.bus.names.nodes_bucket)
        await kv.put(info.node_id, encode(msgspec.structs.replace(info, heartbeat_at=utcnow())))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for info in list(self.nodes.values()):
                await self._put(info)


@pytest.fixture
async def heartbeats(bus: Bus) -> AsyncIterator[Heartbeats]:
    hb = Heartbeats(bus)
    task = asyncio.create_task(hb.run())
    yield hb
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _placements(bus: Bus) -> dict[str, Placement]:
    kv = await bus.kv(bus.names.placements_bucket)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    result = {}
    for key in keys:
        entry = await kv.get(key)
        assert entry.value is not None
        result[key] = msgspec.json.decode(entry.value, type=Placement)
    return result


def _per_node(placements: dict[str, Placement] | list[Placement]) -> Counter[str]:
    values = placements.values() if isinstance(placements, dict) else placements
    return Counter(p.node_id for p in values)


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
    assert _per_node(reply.placements) == {"n1": 2, "n2": 2}

    stored = await _placements(bus)
    assert {k for k in stored if k.startswith("web.")} == {"web.0", "web.1", "web.2", "web.3"}
    kv = await bus.kv(bus.names.deployments_bucket)
    entry = await kv.get("web")
    assert entry.value is not None
    assert msgspec.json.decode(entry.value, type=Deployment).image == "agent:1"

    # Scale down, then delete.
    reply = await scheduler.client.deploy(Deployment(name="web", replicas=1, image="agent:1"))
    assert [p.replica for p in reply.placements] == [0]
    assert set(await _placements(bus)) == {"web.0"}
    reply = await scheduler.client.delete_deployment("web")
    assert reply.placements == []
    assert await _placements(bus) == {}
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
        return _per_node(reply.placements) == {"n1": 2, "n2": 2}

    await eventually(spread, what="replicas spread over both nodes")
    before = await _placements(bus)
    kept = {k for k, p in before.items() if p.node_id == "n1"}

    await heartbeats.remove("n2")

    async def moved() -> bool:
        return _per_node(await _placements(bus)) == {"n1": 4}

    await eventually(moved, what="replicas moved off the lost node")
    after = await _placements(bus)
    assert all(after[k] == before[k] for k in kept)  # untouched replicas stay put


@pytest.mark.timeout(60)
async def test_unplaced_replicas_wait_for_a_node(
    bus: Bus, heartbeats: Heartbeats, scheduler: Scheduler
) -> None:
    reply = await scheduler.client.deploy(
        Deployment(name="worker", replicas=2, command=["python", "-m", "agentbus.agents.echo"])
    )
    assert reply.placements == []

    async def unplaced_gauge() -> bool:
        return scheduler.metric("agentbus_scheduler_unplaced_replicas") == 2

    await eventually(unplaced_gauge, what="unplaced gauge")

    await heartbeats.add("docker-only")  # incompatible: stays unplaced
    await heartbeats.add("proc", runtime="process")

    async def placed() -> bool:
        return _per_node(await _placements(bus)) == {"proc": 2}

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
        return _per_node(reply.placements) == {"alive": 1, "silent": 1}

    await eventually(spread, what="replicas on both nodes")

    async def moved() -> bool:
        return _per_node(await _placements(bus)) == {"alive": 2}

    await eventually(moved, timeout_s=30, what="replicas moved off the expired node")
