"""Fixtures of the supervisor tests: a real Docker engine, node ids, cleanup.

Docker tests never skip: without an engine they fail and say how to get one.
Every container a test makes carries ``agentbus.test=1`` and is removed by id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiodocker
import pytest

from agentbus.bus import Bus
from tests._harness.supervisor import (
    BASE_IMAGE,
    SLEEP_CMD,
    TEST_LABELS,
    EventLog,
    remove_node_containers,
)


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    try:
        client = aiodocker.Docker()
        await asyncio.wait_for(client.version(), 5)
    except Exception as exc:
        pytest.fail(
            f"no Docker engine answers ({exc!r}): run `bash scripts/setup.sh` to install "
            "and start one"
        )
    try:
        await client.images.inspect(BASE_IMAGE)
    except aiodocker.DockerError:
        await client.close()
        pytest.fail(f"image {BASE_IMAGE} is missing: run `bash scripts/setup.sh`")
    yield client
    await client.close()


@pytest.fixture
def node_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def node_containers(docker: aiodocker.Docker, node_id: str) -> AsyncIterator[str]:
    """Removes (by id) every container labelled with this test's node id at the end."""
    yield node_id
    await remove_node_containers(docker, node_id)


@pytest.fixture
async def make_container(
    docker: aiodocker.Docker,
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Create and start a sleeping container with ``labels``; removed by id at the end."""
    made: list[str] = []

    async def _make(labels: dict[str, str]) -> str:
        config: dict[str, Any] = {
            "Image": BASE_IMAGE,
            "Cmd": SLEEP_CMD,
            "Labels": {**TEST_LABELS, **labels},
            "HostConfig": {"Init": True, "NetworkMode": "none"},
        }
        name = f"agentbus-test-{uuid.uuid4().hex[:8]}"
        container = await docker.containers.create(config, name=name)
        made.append(container.id)
        await container.start()
        return container.id

    yield _make
    for cid in made:
        try:
            await docker.containers.container(cid).delete(force=True)
        except aiodocker.DockerError:
            pass


@pytest.fixture
async def events(bus: Bus) -> EventLog:
    log = EventLog()
    await log.start(bus)
    return log
