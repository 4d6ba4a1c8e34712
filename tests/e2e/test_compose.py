"""`just up` / `just down`: the compose stack runs a task in an agent container it starts."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import httpx
import pytest

from agentbus.auth.tokens import create_token
from agentbus.client import Client
from agentbus.messages import Deployment
from agentbus.settings import BusSettings

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
NODE_LABEL = "agentbus.node=compose-node-1"


def just(*args: str, timeout_s: float = 420) -> None:
    done = subprocess.run(
        ["just", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"just {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def compose_stack(agent_image: str) -> Iterator[None]:
    just("up")
    try:
        yield
    finally:
        just("down")


def echo_deployment(name: str) -> Deployment:
    command = ["python", "-m", "agentbus.agents.echo"]
    return Deployment(
        name=name, image="agentbus/agent:dev", image_command=command, capabilities=["echo"]
    )


async def containers(label: str) -> list[str]:
    async with aiodocker.Docker() as docker:
        found = await docker.containers.list(all=True, filters={"label": [label]})
        return [str(c.id) for c in found]


async def test_compose_stack_runs_a_task_in_an_agent_container(compose_stack: None) -> None:
    client = await Client.connect(BusSettings(nats_url="nats://127.0.0.1:4222"))
    try:
        await client.deploy(echo_deployment("compose-echo"))
        async with asyncio.timeout(90):
            while not await client.agents("echo"):
                await asyncio.sleep(0.5)
        _, secret = await create_token(client.bus, "compose-e2e", ["tasks:submit", "tasks:read"])
        headers = {"Authorization": f"Bearer {secret}"}
        url = "http://127.0.0.1:8080"
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
            assert (await http.get("/v1/tasks")).status_code == 200
            async with httpx.AsyncClient(base_url=url) as anonymous:
                assert (await anonymous.get("/v1/tasks")).status_code == 401
            created = await http.post("/v1/tasks", json={"capability": "echo", "input": [1, 2]})
            assert created.status_code == 201, created.text
            task_id = created.json()["task_id"]
            done = (await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 45})).json()
        assert done["status"] == "succeeded", done
        assert done["output"] == [1, 2]
        async with aiodocker.Docker() as docker:
            (agent,) = await docker.containers.list(filters={"label": [NODE_LABEL]})
            info = await agent.show()
        assert "agentbus" in info["NetworkSettings"]["Networks"], "agent on the compose network"
        assert info["Config"]["Labels"]["agentbus.agent_id"] == done["agent_id"]
    finally:
        await client.close()


async def test_down_leaves_nothing_behind(agent_image: str) -> None:
    just("up")
    client = await Client.connect(BusSettings(nats_url="nats://127.0.0.1:4222"))
    try:
        await client.deploy(echo_deployment("leftover"))
        async with asyncio.timeout(90):
            while not await containers(NODE_LABEL):
                await asyncio.sleep(0.5)
    finally:
        await client.close()
        just("down")
    assert await containers(NODE_LABEL) == []
    assert await containers("com.docker.compose.project=agentbus") == []
