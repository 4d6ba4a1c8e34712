"""An agent container gets its minted credentials as a read-only file, not in its env."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from agentbus.auth import nats_jwt
from agentbus.auth.creds import creds_jwt
from agentbus.messages import Deployment
from agentbus_supervisor.runtime import CONTAINER_CREDS_DIR, CONTAINER_CREDS_PATH
from tests._harness.auth import AuthServer, supervised_fleet
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    docker_settings,
    registered,
    remove_node_containers,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


@pytest.fixture
async def node() -> AsyncIterator[str]:
    node_id = f"n-{uuid.uuid4().hex[:8]}"
    docker = aiodocker.Docker()
    try:
        yield node_id
    finally:
        await remove_node_containers(docker, node_id)
        await docker.close()


async def test_agent_container_serves_with_its_own_mounted_credentials(
    secured: AuthServer, prefix: str, tmp_path: Path, node: str, agent_image: str
) -> None:
    creds_dir = tmp_path / "creds"
    settings = docker_settings(
        node,
        auth_dir=secured.auth.path,
        creds_dir=creds_dir,
        state_dir=tmp_path / "state",
        replica_creds_ttl_s=6.0,  # renewed every 3 s: the container must see the new file
    )
    deployment = Deployment(
        name="worker",
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
    )
    docker = aiodocker.Docker()
    try:
        async with supervised_fleet(secured, prefix, settings) as client:
            operator = client.bus
            await client.deploy(deployment)
            await eventually(registered(operator, "worker-0"), timeout_s=90)
            [container] = await docker.containers.list(filters={"label": [f"agentbus.node={node}"]})
            info = await container.show()
            env = info["Config"]["Env"]
            assert f"AGENTBUS_CREDS_FILE={CONTAINER_CREDS_PATH}" in env
            assert not any(
                "NATS USER JWT" in e or e.split("=", 1)[-1].startswith("SU") for e in env
            )
            [mount] = [m for m in info["Mounts"] if m["Destination"] == CONTAINER_CREDS_DIR]
            assert mount["RW"] is False  # its directory: a renewed file shows through
            assert mount["Source"] == str(creds_dir / "worker-0")
            expires_at = nats_jwt.decode(creds_jwt(creds_dir / "worker-0" / "agent.creds"))["exp"]
            await eventually(lambda: time.time() > expires_at + 3, timeout_s=20)
            task = await client.submit("echo", {"n": 1})
            record = await client.wait(task.task_id, timeout_s=60)
            assert record.status == "succeeded"
            assert record.agent_id == "worker-0"
            assert (await container.show())["State"]["Running"]  # reconnected, not restarted
    finally:
        await docker.close()
