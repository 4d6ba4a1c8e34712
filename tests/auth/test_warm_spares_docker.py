"""Warm spare containers with authentication on: a killed replica's successor is a
spare container that reads the replica's minted credentials from its own mounted
directory, and a restarted supervisor adopts that container as the replica."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from agentbus.auth.authority import service_creds
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import Backoff, Deployment
from agentbus.settings import BusSettings
from tests._harness.auth import AuthServer
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    docker_settings,
    registered,
    remove_node_containers,
    replica_where,
    running_supervisor,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    engine = aiodocker.Docker()
    yield engine
    await engine.close()


@pytest.fixture
async def node(docker: aiodocker.Docker) -> AsyncIterator[str]:
    node_id = f"n-{uuid.uuid4().hex[:8]}"
    try:
        yield node_id
    finally:
        await remove_node_containers(docker, node_id)


async def spares(docker: aiodocker.Docker, node_id: str) -> list[str]:
    """Ids of this node's running spare containers (claimed or not)."""
    filters = {"label": [f"agentbus.node={node_id}", "agentbus.replica=-1"], "status": ["running"]}
    return [c.id for c in await docker.containers.list(filters=json.dumps(filters))]


async def test_killed_replica_container_is_taken_over_by_a_spare_and_adopted(
    secured: AuthServer,
    prefix: str,
    tmp_path: Path,
    node: str,
    agent_image: str,
    docker: aiodocker.Docker,
) -> None:
    settings = docker_settings(
        node,
        auth_dir=secured.auth.path,
        creds_dir=tmp_path / "creds",
        state_dir=tmp_path / "state",
        stop_replicas_on_exit=False,
    )
    deployment = Deployment(
        name="warm",
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        warm_spares=1,
        backoff=Backoff(initial_s=0.05, factor=2.0, max_s=1.0),
    )
    operator = await Bus.connect(secured.operator(prefix))
    await operator.ensure()
    scheduler = await Bus.connect(secured.service(prefix, "scheduler"))
    creds = service_creds(secured.auth, prefix, "supervisor", node_id=node)
    supervisor = await Bus.connect(
        BusSettings(nats_url=secured.url, prefix=prefix, creds_file=creds)
    )
    client = Client(operator)
    try:
        async with running_scheduler(scheduler, probe=operator):
            async with running_supervisor(supervisor, settings, probe=operator):
                await client.deploy(deployment)
                await eventually(registered(operator, "warm-0"), timeout_s=90)
                (spare,) = await eventually(lambda: spares(docker, node), timeout_s=60)
                first = await eventually(
                    replica_where(operator, node, lambda r: r.state == "running")
                )
                await docker.containers.container(first.runtime_id).kill()

                successor = await eventually(
                    replica_where(operator, node, lambda r: r.runtime_id == spare),
                    timeout_s=60,
                )
                assert successor.agent_id == "warm-0" and successor.state == "running"
                record = await client.wait(
                    (await client.submit("echo", {"n": 1})).task_id, timeout_s=60
                )
                assert record.status == "succeeded" and record.agent_id == "warm-0"
                assert (tmp_path / "creds" / successor_folder(tmp_path)).is_dir()
                # a successor spare is started for the next death
                await eventually(lambda: _other(spares(docker, node), spare), timeout_s=60)
            # The stopped supervisor left the replica (claimed spare) running and
            # stopped its unclaimed spare.
            assert await spares(docker, node) == [spare]
            async with running_supervisor(supervisor, settings, probe=operator):
                adopted = await eventually(
                    replica_where(operator, node, lambda r: r.state == "running")
                )
                assert adopted.runtime_id == spare and adopted.agent_id == "warm-0"
                record = await client.wait(
                    (await client.submit("echo", {"n": 2})).task_id, timeout_s=60
                )
                assert record.status == "succeeded" and record.agent_id == "warm-0"
    finally:
        for bus in (operator, scheduler, supervisor):
            await bus.close()


def successor_folder(tmp_path: Path) -> str:
    """The one spare directory holding a claim (and the replica's creds)."""
    (claim,) = (tmp_path / "creds").glob("warm-spare-*/claim.json")
    assert (claim.parent / "agent.creds").is_file()
    return claim.parent.name


async def _other(found: object, spare: str) -> list[str] | None:
    ids = await found  # type: ignore[misc]
    return [i for i in ids if i != spare] or None
