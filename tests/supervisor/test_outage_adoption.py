"""Scheduler and supervisor down together, then started together: the node's entry is
gone (deleted on stop, or expired), so the scheduler's first pass unplaces the node's
replicas; the supervisor must still adopt its running containers, not replace them."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import aiodocker
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.messages import Deployment
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    BASE_IMAGE,
    SLEEP_CMD,
    EventLog,
    docker_settings,
    put_deployment,
    running_supervisor,
    status_of,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


async def _containers(docker: aiodocker.Docker, node_id: str) -> set[str]:
    filters = json.dumps({"label": [f"agentbus.node={node_id}"], "status": ["running"]})
    return {c["Id"] for c in await docker.containers.list(all=True, filters=filters)}


async def _running(bus: Bus, node_id: str, n: int) -> set[str] | None:
    replicas = (await status_of(bus, node_id)()).replicas
    if len(replicas) == n and all(r.state == "running" for r in replicas):
        return {r.runtime_id for r in replicas}
    return None


@pytest.mark.parametrize("first", ["scheduler", "supervisor"])
async def test_containers_survive_a_joint_outage(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str, first: str
) -> None:
    node_id = node_containers
    await put_deployment(
        bus, Deployment(name="keep", replicas=2, image=BASE_IMAGE, image_command=SLEEP_CMD)
    )
    leave = docker_settings(node_id, docker_network="none", stop_replicas_on_exit=False)
    async with running_scheduler(bus), running_supervisor(bus, leave):
        ids = await eventually(lambda: _running(bus, node_id, 2), timeout_s=60, what="2 up")
    # Both down: the node entry is gone (a clean stop deletes it; a crash lets it expire).
    nodes_kv = await bus.kv(bus.names.nodes_bucket)
    with pytest.raises(nats.js.errors.NoKeysError):
        await nodes_kv.keys()
    assert await _containers(docker, node_id) == ids

    async with AsyncExitStack() as stack:
        starts: dict[str, Any] = {
            "scheduler": lambda: running_scheduler(bus),
            "supervisor": lambda: running_supervisor(bus, leave),
        }
        for name in sorted(starts, key=lambda n: n != first):
            await stack.enter_async_context(starts[name]())

        async def adopted_both() -> set[str] | None:
            now = await _running(bus, node_id, 2)
            adopted = [e for e in events.of("started") if e.reason == "adopted"]
            return now if now and len(adopted) == 2 else None

        assert await eventually(adopted_both, timeout_s=90, what="both adopted") == ids
        assert await _containers(docker, node_id) == ids  # nothing replaced them
    reasons = [e.reason for e in events.of("started")]
    assert reasons[:2] == ["placed"] * 2
    assert set(reasons[2:]) == {"adopted"}  # (adopted again if unplaced meanwhile)
    assert events.of("stopped") == []
