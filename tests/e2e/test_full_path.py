"""The whole path, through real processes: HTTP → gateway → scheduler → agent → record.

Each test runs an ``EmbeddedStack`` (nats-server and the five services as processes)
and deploys ``echo`` agents, as Docker containers or as local processes.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import AsyncIterator

import aiodocker
import httpx
import msgspec
import pytest

from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.messages import Backoff, Deployment, ReplicaEvent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ECHO = ["python", "-m", "agentbus.agents.echo"]
SHORT_LEASE = {"AGENTBUS_AGENT_LEASE_S": "3", "AGENTBUS_AGENT_FETCH_TIMEOUT_S": "1"}


def echo_deployment(runtime: str, image: str, replicas: int) -> Deployment:
    common = {
        "name": "echo",
        "replicas": replicas,
        "capabilities": ["echo"],
        "env": SHORT_LEASE,
        "backoff": Backoff(initial_s=0.2),
    }
    if runtime == "docker":
        return Deployment(image=image, image_command=ECHO, **common)  # type: ignore[arg-type]
    return Deployment(command=[sys.executable, *ECHO[1:]], **common)  # type: ignore[arg-type]


async def wait_for_agents(
    client: Client, capability: str, count: int, timeout_s: float = 60
) -> None:
    async with asyncio.timeout(timeout_s):
        while len(await client.agents(capability)) < count:
            await asyncio.sleep(0.2)


async def stack_client(runtime: str) -> AsyncIterator[tuple[EmbeddedStack, Client]]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    async with EmbeddedStack(runtime=runtime, prefix=prefix) as stack:  # type: ignore[arg-type]
        bus = await Bus.connect(stack.settings)
        try:
            yield stack, Client(bus)
        finally:
            await bus.close()


@pytest.fixture
async def docker_stack(agent_image: str) -> AsyncIterator[tuple[EmbeddedStack, Client]]:
    async for pair in stack_client("docker"):
        yield pair


@pytest.fixture
async def process_stack() -> AsyncIterator[tuple[EmbeddedStack, Client]]:
    async for pair in stack_client("process"):
        yield pair


async def roundtrip_over_http(stack: EmbeddedStack, client: Client) -> dict[str, object]:
    _, secret = await create_token(client.bus, "e2e", ["tasks:submit", "tasks:read"])
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60, headers=headers) as http:
        created = await http.post("/v1/tasks", json={"capability": "echo", "input": {"hi": 1}})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        done = await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 45})
    assert done.status_code == 200
    record: dict[str, object] = done.json()
    assert record["status"] == "succeeded", record
    assert record["output"] == {"hi": 1}
    return record


async def test_http_task_runs_in_a_docker_agent(
    docker_stack: tuple[EmbeddedStack, Client], agent_image: str
) -> None:
    stack, client = docker_stack
    await client.deploy(echo_deployment("docker", agent_image, replicas=1))
    await wait_for_agents(client, "echo", 1)
    record = await roundtrip_over_http(stack, client)
    async with aiodocker.Docker() as docker:
        labels = [f"agentbus.prefix={stack.prefix}", f"agentbus.agent_id={record['agent_id']}"]
        ran_in = await docker.containers.list(filters={"label": labels})
        assert len(ran_in) == 1, "the task's agent is a container of this fleet"
        assert ran_in[0]["State"] == "running"


async def test_http_task_runs_in_a_process_agent(
    process_stack: tuple[EmbeddedStack, Client],
) -> None:
    stack, client = process_stack
    await client.deploy(echo_deployment("process", "", replicas=1))
    await wait_for_agents(client, "echo", 1)
    record = await roundtrip_over_http(stack, client)
    agents = await client.agents("echo")
    assert agents[0].agent_id == record["agent_id"]
    assert agents[0].pid is not None


async def test_killed_container_is_restarted_and_no_task_is_lost(
    docker_stack: tuple[EmbeddedStack, Client], agent_image: str
) -> None:
    stack, client = docker_stack
    bus = client.bus
    events = await bus.js.subscribe(bus.names.events_all("replica"), ordered_consumer=True)
    await client.deploy(echo_deployment("docker", agent_image, replicas=2))
    await wait_for_agents(client, "echo", 2)
    tasks = [await client.build_task("echo", {"sleep_s": 0.1, "n": i}) for i in range(60)]
    await client.submit_many(tasks)
    ids = [t.task_id for t in tasks if t.task_id]
    victim = random.choice(["echo-0", "echo-1"])

    async def kill_victim_after_some_progress() -> str:
        async with asyncio.timeout(60):
            while sum([(await client.get(i)).terminal for i in ids[:20]]) < 5:
                await asyncio.sleep(0.1)
        async with aiodocker.Docker() as docker:
            labels = [f"agentbus.prefix={stack.prefix}", f"agentbus.agent_id={victim}"]
            (container,) = await docker.containers.list(filters={"label": labels})
            await container.kill(signal="SIGKILL")
            return str(container.id)

    killed_id = await kill_victim_after_some_progress()
    finished = [r async for r in client.wait_many(ids, timeout_s=180)]
    assert sorted(r.task_id for r in finished) == sorted(ids)
    assert all(r.status == "succeeded" for r in finished), [r.error for r in finished]
    assert sorted(msgspec.json.decode(r.output)["n"] for r in finished) == list(range(60))

    async with asyncio.timeout(60):
        while True:
            msg = await events.next_msg(timeout=60)
            event = msgspec.json.decode(msg.data, type=ReplicaEvent)
            if event.agent_id == victim and event.kind == "restarting":
                break
    await wait_for_agents(client, "echo", 2)
    async with aiodocker.Docker() as docker:
        labels = [f"agentbus.prefix={stack.prefix}", f"agentbus.agent_id={victim}"]
        (replacement,) = await docker.containers.list(filters={"label": labels})
        assert replacement.id != killed_id
    await events.unsubscribe()
