"""Helpers of the fleet tests: fake node heartbeats and reading the placements bucket."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.messages import NodeInfo, Placement, RuntimeKind, encode, utcnow


class Heartbeats:
    """Keeps fake supervisor heartbeats alive in KV ``<p>_nodes`` (entries have a TTL)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.nodes: dict[str, NodeInfo] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(
        self,
        node_id: str,
        runtime: RuntimeKind = "docker",
        capacity: int = 64,
        *,
        labels: dict[str, str] | None = None,
    ) -> None:
        now = utcnow()
        info = NodeInfo(
            node_id=node_id,
            runtime=runtime,
            started_at=now,
            heartbeat_at=now,
            capacity_replicas=capacity,
            labels=labels or {},
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


async def read_placements(bus: Bus) -> dict[str, Placement]:
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


def per_node(placements: dict[str, Placement] | list[Placement]) -> Counter[str]:
    values = placements.values() if isinstance(placements, dict) else placements
    return Counter(p.node_id for p in values)
