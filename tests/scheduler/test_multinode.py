"""Several nodes on one machine: supervisors with distinct node ids and labels share one
nats-server with one scheduler; placement spreads replicas over them, honours
``node_selector`` and declared resources, and moves the replicas of a node that is lost
(clean stop, or its registry entry expiring after a crash) while tasks keep being served.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import aiodocker
import msgspec
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import (
    AgentInfo,
    Deployment,
    GetNodeStatus,
    NodeStatusReply,
    TaskRecord,
)
from agentbus.messages.fleet import Resources
from agentbus.settings import BusSettings
from agentbus_supervisor.settings import SupervisorSettings
from tests._harness.fleet import per_node, read_placements
from tests._harness.polling import eventually
from tests._harness.services import end_processes, running_scheduler
from tests._harness.supervisor import remove_node_containers, running_supervisor

pytestmark = pytest.mark.timeout(180)

ECHO_ARGS = ["-m", "agentbus.agents.echo"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
FAST_AGENT = {
    "AGENTBUS_AGENT_LEASE_S": "3",
    "AGENTBUS_AGENT_FETCH_TIMEOUT_S": "1",
    "AGENTBUS_AGENT_HEARTBEAT_S": "1",
}


def node(
    node_id: str,
    zone: str,
    runtime: Literal["docker", "process"] = "process",
    *,
    capacity_cpus: float = 0.0,
) -> SupervisorSettings:
    return SupervisorSettings(
        node_id=node_id,
        runtime=runtime,
        labels={"zone": zone},
        capacity_cpus=capacity_cpus,
        heartbeat_s=0.5,
        stop_grace_s=3,
    )


def echo(replicas: int, *, docker_image: str | None = None) -> Deployment:
    if docker_image:
        return Deployment(
            name="echo",
            replicas=replicas,
            image=docker_image,
            image_command=["python", *ECHO_ARGS],
            capabilities=["echo"],
            env=FAST_AGENT,
        )
    return Deployment(
        name="echo",
        replicas=replicas,
        command=[sys.executable, *ECHO_ARGS],
        capabilities=["echo"],
        env=FAST_AGENT,
    )


async def live_agents(bus: Bus, deployment: str) -> dict[str, AgentInfo]:
    kv = await bus.kv(bus.names.agents_bucket)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    found = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            continue
        if not entry.value:  # the marker a TTL expiry leaves (nats-py returns it as is)
            continue
        info = msgspec.json.decode(entry.value, type=AgentInfo)
        if info.deployment == deployment and info.status != "stopping":
            found[key] = info
    return found


async def agents_per_node(bus: Bus, deployment: str) -> Counter[str]:
    return Counter(a.node_id or "" for a in (await live_agents(bus, deployment)).values())


async def running_on(bus: Bus, node_id: str) -> NodeStatusReply:
    subject = f"{bus.names.prefix}.supervisor.{node_id}.status"
    return await bus.request(subject, GetNodeStatus(), NodeStatusReply)


async def deploy_spread(client: Client, deployment: Deployment, expected: dict[str, int]) -> None:
    """Deploy once every node is seen: placement never rebalances running replicas, so a
    deploy that raced a node's first heartbeat is deleted and repeated."""

    async def spread() -> bool:
        reply = await client.deploy(deployment)
        if per_node(reply.placements) == expected:
            return True
        await client.delete_deployment(deployment.name)
        return False

    await eventually(spread, timeout_s=30, every_s=0.2, what=f"{deployment.name} spread")


class TaskStream:
    """Submits ``count`` echo tasks, one every ``interval_s``; then waits for them all."""

    def __init__(self, client: Client, count: int, interval_s: float) -> None:
        self.client, self.count, self.interval_s = client, count, interval_s
        self.ids: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for i in range(self.count):
            record = await self.client.submit("echo", {"i": i}, max_attempts=5)
            self.ids.append(record.task_id)
            await asyncio.sleep(self.interval_s)

    async def outcomes(self, timeout_s: float = 90) -> Counter[str]:
        assert self._task is not None
        await self._task
        records: list[TaskRecord] = await asyncio.gather(
            *(self.client.wait(t, timeout_s=timeout_s) for t in self.ids)
        )
        return Counter(r.status for r in records)


async def test_spread_selector_resources_and_clean_node_loss(bus: Bus) -> None:
    """Process runtime: the placement rules on real supervisors; then one node stops."""
    client = Client(bus)
    async with (
        running_scheduler(bus),
        running_supervisor(bus, node("node-a", "a", capacity_cpus=2.0)),
    ):
        async with running_supervisor(bus, node("node-b", "b", capacity_cpus=2.0)):
            zoned = Deployment(name="zoned", replicas=2, command=SLEEP, node_selector={"zone": "b"})
            heavy = Deployment(
                name="heavy", replicas=3, command=SLEEP, resources=Resources(cpus=1.5)
            )

            await deploy_spread(client, echo(4), {"node-a": 2, "node-b": 2})
            reply = await client.deploy(zoned)
            assert per_node(reply.placements) == {"node-b": 2}
            reply = await client.deploy(heavy)
            assert per_node(reply.placements) == {"node-a": 1, "node-b": 1}
            assert [u.replica for u in reply.unplaced] == [2]
            assert "cpus declared (SUPERVISOR_CAPACITY_CPUS)" in reply.unplaced[0].reason

            async def echo_spread() -> bool:
                return await agents_per_node(bus, "echo") == {"node-a": 2, "node-b": 2}

            await eventually(echo_spread, timeout_s=90, what="4 echo agents, 2 per node")

            async def b_runs_all() -> bool:
                status = await running_on(bus, "node-b")
                return Counter(r.deployment for r in status.replicas if r.state == "running") == {
                    "echo": 2,
                    "zoned": 2,
                    "heavy": 1,
                }

            await eventually(b_runs_all, what="node-b runs what is placed on it")
            stream = TaskStream(client, count=40, interval_s=0.1)
            stream.start()
            await asyncio.sleep(1.0)
        # node-b stopped cleanly (its replicas stopped, its node entry deleted).

        async def moved() -> bool:
            return await agents_per_node(bus, "echo") == {"node-a": 4}

        await eventually(moved, timeout_s=90, what="echo replicas of node-b moved to node-a")
        placements = await read_placements(bus)
        assert per_node(placements) == {"node-a": 5}  # 4 echo + 1 heavy
        listed = await client.deploy(zoned)
        assert [u.reason for u in listed.unplaced] == [
            "no live node matches node_selector {'zone': 'b'}"
        ] * 2
        listed = await client.deploy(heavy)
        assert [u.replica for u in listed.unplaced] == [1, 2]  # node-a fits one 1.5-cpu
        assert await stream.outcomes() == {"succeeded": 40}


@pytest.fixture
def supervisor_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    end_processes(procs)


def spawn_supervisor(bus_settings: BusSettings, node_id: str, zone: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "SUPERVISOR_NODE_ID": node_id,
        "SUPERVISOR_RUNTIME": "process",
        "SUPERVISOR_LABELS": json.dumps({"zone": zone}),
        "SUPERVISOR_HEARTBEAT_S": "0.5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentbus_supervisor"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_crashed_node_expires_and_its_replicas_move(
    bus: Bus, bus_settings: BusSettings, supervisor_procs: list[subprocess.Popen[bytes]]
) -> None:
    """A node that dies without leaving (SIGKILL, machine gone) is lost when its registry
    entry expires (TTL); its replicas are re-placed and tasks keep being served."""
    client = Client(bus)
    async with running_scheduler(bus), running_supervisor(bus, node("node-a", "a")):
        crashed = spawn_supervisor(bus_settings, "node-c", "c")
        supervisor_procs.append(crashed)

        await deploy_spread(client, echo(4), {"node-a": 2, "node-c": 2})

        async def echo_spread() -> bool:
            return await agents_per_node(bus, "echo") == {"node-a": 2, "node-c": 2}

        await eventually(echo_spread, timeout_s=90, what="4 echo agents, 2 per node")
        pids = [int(r.runtime_id) for r in (await running_on(bus, "node-c")).replicas]
        assert len(pids) == 2
        stream = TaskStream(client, count=60, interval_s=0.25)
        stream.start()
        await asyncio.sleep(1.0)

        # The machine dies: the supervisor and its agents, with no goodbye.
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(10)
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)  # the process runtime starts each in its session
        nodes_kv = await bus.kv(bus.names.nodes_bucket)
        assert (await nodes_kv.get("node-c")).value  # still listed: no clean leave

        async def moved() -> bool:
            return per_node(await read_placements(bus)) == {"node-a": 4}

        await eventually(moved, timeout_s=40, what="placements moved after the entry expired")

        async def served_by_a() -> bool:
            agents = await live_agents(bus, "echo")
            return len(agents) == 4 and all(a.node_id == "node-a" for a in agents.values())

        await eventually(served_by_a, timeout_s=90, what="4 echo agents on node-a")
        assert await stream.outcomes() == {"succeeded": 60}


@pytest.fixture
async def docker_nodes(agent_image: str, prefix: str) -> AsyncIterator[list[str]]:
    """Two node ids; every container labelled with them is removed (by id) at the end."""
    ids = [f"{prefix}-d1", f"{prefix}-d2"]
    yield ids
    async with aiodocker.Docker() as docker:
        for node_id in ids:
            await remove_node_containers(docker, node_id)


@pytest.mark.slow
async def test_docker_nodes_spread_and_move(
    bus: Bus, agent_image: str, docker_nodes: list[str]
) -> None:
    """Docker runtime: two supervisors on one engine, replicas spread, one node stops."""
    client = Client(bus)
    d1, d2 = docker_nodes
    async with running_scheduler(bus), running_supervisor(bus, node(d1, "a", "docker")):
        async with running_supervisor(bus, node(d2, "b", "docker")):
            await deploy_spread(client, echo(4, docker_image=agent_image), {d1: 2, d2: 2})

            async def echo_spread() -> bool:
                return await agents_per_node(bus, "echo") == {d1: 2, d2: 2}

            await eventually(echo_spread, timeout_s=90, what="4 echo containers, 2 per node")
            stream = TaskStream(client, count=40, interval_s=0.1)
            stream.start()
            await asyncio.sleep(1.0)

        async def moved() -> bool:
            return await agents_per_node(bus, "echo") == {d1: 4}

        await eventually(moved, timeout_s=90, what="echo replicas of the stopped node moved")
        assert await stream.outcomes() == {"succeeded": 40}
        async with aiodocker.Docker() as docker:
            filters = json.dumps({"label": [f"agentbus.node={d2}"]})
            assert await docker.containers.list(all=True, filters=filters) == []
