"""Scale-down never kills a busy replica: its task finishes within the stop grace, or
is returned and completed by another replica; adoption across supervisor restarts."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import aiodocker
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import Deployment, TaskRecord
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    BASE_IMAGE,
    SLEEP_CMD,
    EventLog,
    docker_settings,
    place,
    put_deployment,
    replica_where,
    running_supervisor,
    status_of,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


def worker(agent_image: str, *, replicas: int, stop_grace_s: float) -> Deployment:
    return Deployment(
        name="worker",
        replicas=replicas,
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        max_concurrency=1,
        stop_grace_s=stop_grace_s,
    )


async def running_on(client: Client, task_id: str) -> TaskRecord | None:
    record = await client.get(task_id)
    return record if record.status == "running" and record.agent_id else None


async def containers_of(docker: aiodocker.Docker, node_id: str) -> list[dict[str, Any]]:
    filters = json.dumps({"label": [f"agentbus.node={node_id}"]})
    return [c._container for c in await docker.containers.list(all=True, filters=filters)]


async def test_scale_down_lets_the_running_task_finish(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str, agent_image: str
) -> None:
    node_id = node_containers
    client = Client(bus)
    async with running_scheduler(bus), running_supervisor(bus, docker_settings(node_id)):
        await client.deploy(worker(agent_image, replicas=1, stop_grace_s=20.0))
        await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        record = await client.submit("echo", {"sleep_s": 4, "n": 1})
        busy = await eventually(lambda: running_on(client, record.task_id), timeout_s=60)
        assert busy.agent_id == "worker-0"
        await client.scale("worker", 0)  # while the task runs
        done = await client.wait(record.task_id, timeout_s=60)
        assert done.status == "succeeded"
        assert done.agent_id == "worker-0"
        assert [a.status for a in done.attempts] == ["succeeded"]
        stopped = await eventually(lambda: events.of("stopped", "worker-0"))
        assert stopped[0].reason == "unplaced"
        assert events.of("exited", "worker-0") == []  # stopped, not crashed
        assert await containers_of(docker, node_id) == []


async def test_scale_down_returns_a_long_task_to_another_replica(
    bus: Bus, events: EventLog, node_containers: str, agent_image: str
) -> None:
    node_id = node_containers
    client = Client(bus)
    async with running_scheduler(bus), running_supervisor(bus, docker_settings(node_id)):
        await client.deploy(worker(agent_image, replicas=2, stop_grace_s=3.0))
        await eventually(lambda: _all_running(bus, node_id, 2), timeout_s=60)
        # Two tasks longer than the stop grace, one per replica (max_concurrency 1).
        records = [
            await client.submit("echo", {"sleep_s": 6, "n": n}, max_attempts=3) for n in (1, 2)
        ]
        for r in records:
            await eventually(partial(running_on, client, r.task_id), timeout_s=60)
        await client.scale("worker", 1)  # worker-1 leaves while busy
        await eventually(lambda: events.of("stopped", "worker-1"), timeout_s=60)
        for r in records:
            done = await client.wait(r.task_id, timeout_s=120)
            assert done.status == "succeeded"  # finished, or returned and finished elsewhere
            assert "failed" not in [a.status for a in done.attempts]
        # The task worker-1 had was returned, then completed by worker-0.
        finals = [await client.get(r.task_id) for r in records]
        assert {f.agent_id for f in finals} == {"worker-0"}
        assert any(a.agent_id == "worker-1" for f in finals for a in f.attempts)


async def test_restarted_supervisor_adopts_twice_without_duplicates(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str
) -> None:
    node_id = node_containers
    dep = Deployment(name="keep", image=BASE_IMAGE, image_command=SLEEP_CMD)
    await put_deployment(bus, dep)
    for replica in range(3):
        await place(bus, "keep", replica, node_id)
    leave = docker_settings(node_id, docker_network="none", stop_replicas_on_exit=False)
    async with running_supervisor(bus, leave):
        await eventually(
            lambda: _all_running(bus, node_id, 3), what="3 replicas running", timeout_s=60
        )
        ids = {r.runtime_id for r in (await status_of(bus, node_id)()).replicas}
    for round_ in range(2):
        assert {c["Id"] for c in await containers_of(docker, node_id)} == ids
        async with running_supervisor(bus, leave):
            await eventually(lambda: _all_running(bus, node_id, 3), timeout_s=60)
            status = await status_of(bus, node_id)()
            assert {r.runtime_id for r in status.replicas} == ids  # adopted, not started
            assert all(r.restarts == 0 for r in status.replicas)
            assert len(await containers_of(docker, node_id)) == 3
        assert len(events.of("started")) == 3 * (round_ + 2)
    adopted = [e for e in events.of("started") if e.reason == "adopted"]
    assert len(adopted) == 6
    assert len(await containers_of(docker, node_id)) == 3


async def _all_running(bus: Bus, node_id: str, n: int) -> bool:
    replicas = (await status_of(bus, node_id)()).replicas
    return len(replicas) == n and all(r.state == "running" for r in replicas)
