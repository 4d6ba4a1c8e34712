"""`just up` / `just down`: the compose stack runs a task in an agent container it starts,
and its archiver copies the task's events into the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import httpx
import pytest

from agentbus.audit import AuditSettings
from agentbus.audit.queries import connect, task_events
from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import AuthenticationError
from agentbus.messages import Deployment
from agentbus.settings import BusSettings
from tests._harness.polling import eventually

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
NODE_LABEL = "agentbus.node=compose-node-1"
AUTH_DIR = ROOT / "compose" / ".auth"
"""Where `just up` keeps the stack's credentials (scripts/compose_auth.sh)."""
OPERATOR = BusSettings(
    nats_url="nats://127.0.0.1:4222", creds_file=AUTH_DIR / "creds" / "operator.creds"
)
AUDIT = AuditSettings(database_url="postgresql://agentbus:agentbus@127.0.0.1:5432/agentbus")
"""The stack's audit database, published on 127.0.0.1 (default password, compose.yaml)."""


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
    # authentication is on: no creds are refused, the operator's work
    with pytest.raises(AuthenticationError, match="Authorization Violation"):
        await Bus.connect(BusSettings(nats_url="nats://127.0.0.1:4222"))
    client = await Client.connect(OPERATOR)
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
    # the archiver copied the task's events into postgres, each once, in order
    async with await connect(AUDIT) as conn:

        async def archived() -> list[str]:
            kinds = [row.kind for row in await task_events(conn, task_id)]
            return kinds if "succeeded" in kinds else []

        kinds = await eventually(archived, timeout_s=30, every_s=0.5, what="task in the audit")
    assert kinds == ["queued", "running", "succeeded"], kinds


async def test_down_leaves_nothing_behind(agent_image: str) -> None:
    just("up")
    client = await Client.connect(OPERATOR)
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


def compose_cli() -> list[str]:
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    assert found, "neither `docker compose` nor docker-compose is installed"
    return [found]


def test_compose_refuses_to_start_without_the_auth_files(tmp_path: Path) -> None:
    project = f"agentbus-noauth-{uuid.uuid4().hex[:8]}"
    compose = [*compose_cli(), "-f", str(ROOT / "compose" / "compose.yaml"), "-p", project]
    env = {k: v for k, v in os.environ.items() if k != "AGENTBUS_COMPOSE_AUTH_DIR"}
    # without the variable `just up` sets, compose refuses and says what to run
    unset = subprocess.run([*compose, "config"], env=env, capture_output=True, text=True)
    assert unset.returncode != 0
    assert "run `just up`" in unset.stdout + unset.stderr
    # with it, but no files: no container is created (an open nats-server least of all)
    env["AGENTBUS_COMPOSE_AUTH_DIR"] = str(tmp_path / "auth")
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--no-build", "nats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode != 0, up.stdout + up.stderr
        assert "bind source path does not exist" in up.stderr
        assert f"{tmp_path}/auth/server.conf" in up.stderr
        assert not (tmp_path / "auth").exists()  # no directory made in place of the file
    finally:
        subprocess.run(
            [*compose, "down", "-v"], env=env, capture_output=True, timeout=120, check=False
        )
