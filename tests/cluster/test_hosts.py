"""Three hosts (network namespaces) on one machine: a real R3 cluster with the services.

Each host runs a nats-server of the cluster, a registry, a scheduler and a supervisor
(``tests._harness.hosts``); traffic between hosts crosses the test's bridge. A
deployment of ``echo`` replicas spread over the hosts serves tasks end to end, and
every stream, KV bucket and object store is R3 with all replicas current.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import AgentBusError
from agentbus.messages import Deployment
from tests._harness.hosts import HostFleet, replication_problems
from tests._harness.netns import Network, netns_available
from tests._harness.polling import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[HostFleet]:
    with Network() as network:
        async with HostFleet(network, tmp_path, size=3) as fleet:
            yield fleet


async def test_tasks_run_on_three_hosts_with_r3_streams(fleet: HostFleet) -> None:
    bus = await Bus.connect(fleet.settings, name="hosts-test")
    try:
        client = Client(bus)
        deployment = Deployment(
            name="echo",
            replicas=3,
            command=[sys.executable, "-m", "agentbus.agents.echo"],
            capabilities=["echo"],
            env={"AGENTBUS_AGENT_HEARTBEAT_S": "1"},
        )
        await eventually(lambda: _deploys(client, deployment), timeout_s=30, what="deploy")

        async def spread() -> Counter[str] | None:
            nodes = Counter(a.node_id or "" for a in await client.agents("echo"))
            return nodes if nodes == Counter({"h0": 1, "h1": 1, "h2": 1}) else None

        await eventually(spread, timeout_s=60, every_s=0.5, what="one replica per host")

        tasks = [await client.build_task("echo", {"n": i}) for i in range(60)]
        assert all(r.created for r in await client.submit_many(tasks))
        sent = {t.task_id: msgspec.json.decode(t.input) for t in tasks if t.task_id}
        records = [r async for r in client.wait_many(sent, timeout_s=60)]
        assert sorted(r.status for r in records) == ["succeeded"] * 60
        assert {r.task_id: msgspec.json.decode(r.output) for r in records} == sent
        ran_on = Counter(r.agent_id for r in records)
        assert len(ran_on) >= 2, f"tasks ran on one agent only: {ran_on}"

        problems = await eventually(
            lambda: _fully_replicated(bus), timeout_s=30, what="every stream R3 and current"
        )
        assert problems is True
    finally:
        await bus.close()


async def _deploys(client: Client, deployment: Deployment) -> bool:
    try:
        await client.deploy(deployment)
    except AgentBusError:
        return False
    return True


async def _fully_replicated(bus: Bus) -> bool:
    return not await replication_problems(bus)
