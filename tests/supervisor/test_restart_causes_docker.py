"""Restart causes with real containers: an agent OOM-killed at its memory limit (its
neighbour untouched), a failed health check run by ``docker exec``, a hung (paused)
agent restarted for missed heartbeats."""

from __future__ import annotations

import asyncio

import aiodocker
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import Backoff, Deployment
from agentbus.messages.fleet import HealthCheck, Limits
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    BASE_IMAGE,
    EventLog,
    docker_settings,
    place,
    put_deployment,
    registered,
    replica_where,
    running_supervisor,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]
FAST = Backoff(initial_s=0.1, factor=2.0, max_s=1.0, jitter=0.0)
HOG_AGENT = """
from agentbus.runtime.agent import Agent, TaskContext

agent = Agent("hog")


@agent.handler("hog")
async def hog(ctx: TaskContext, size_bytes: int) -> int:
    data = b"x" * size_bytes  # written, so resident: past the limit the kernel kills us
    return len(data)


agent.main()
"""


async def test_oom_killed_agent_restarts_and_its_neighbour_is_untouched(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str, agent_image: str
) -> None:
    node_id = node_containers
    hog = Deployment(
        name="hog",
        image=agent_image,
        image_command=["python", "-c", HOG_AGENT],
        capabilities=["hog"],
        limits=Limits(memory_bytes=160 * 1024 * 1024),
        backoff=FAST,
    )
    calm = Deployment(
        name="calm",
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        limits=Limits(memory_bytes=160 * 1024 * 1024),
    )
    for dep in (hog, calm):
        await put_deployment(bus, dep)
        await place(bus, dep.name, 0, node_id)
    async with running_scheduler(bus), running_supervisor(bus, docker_settings(node_id)):
        await eventually(registered(bus, "hog-0"), timeout_s=60)
        await eventually(registered(bus, "calm-0"), timeout_s=60)
        neighbour = await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "calm-0" and r.state == "running")
        )
        first = await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "hog-0" and r.state == "running")
        )
        inspect = await docker.containers.container(first.runtime_id).show()
        assert inspect["HostConfig"]["Memory"] == 160 * 1024 * 1024

        await Client(bus).submit("hog", 1024 * 1024 * 1024, max_attempts=1)
        restarting = await eventually(lambda: events.of("restarting", "hog-0"), timeout_s=60)
        assert (restarting[0].reason, restarting[0].exit_code) == ("oom", 137)
        assert events.of("exited", "hog-0")[0].reason == "oom"
        again = await eventually(
            replica_where(
                bus,
                node_id,
                lambda r: r.agent_id == "hog-0" and r.restarts >= 1 and r.state == "running",
            ),
            timeout_s=30,
        )
        assert again.runtime_id != first.runtime_id

        # The neighbour: same container, never restarted, still serving.
        now = await replica_where(bus, node_id, lambda r: r.agent_id == "calm-0")()
        assert now is not None
        assert (now.runtime_id, now.restarts, now.state) == (neighbour.runtime_id, 0, "running")
        state = (await docker.containers.container(now.runtime_id).show())["State"]
        assert state["Running"] and not state["OOMKilled"]
        assert events.of("exited", "calm-0") == []
        record = await Client(bus).submit("echo", {"still": "here"})
        done = await Client(bus).wait(record.task_id, timeout_s=60)
        assert done.status == "succeeded"


async def test_failed_health_check_restarts_the_container(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str
) -> None:
    node_id = node_containers
    code = "import pathlib, time; pathlib.Path('/tmp/ok').touch(); time.sleep(600)"
    dep = Deployment(
        name="probed",
        image=BASE_IMAGE,
        image_command=["python3", "-c", code],
        backoff=FAST,
        heartbeat_timeout_s=None,  # not an agentbus agent
        health=HealthCheck(command=["test", "-e", "/tmp/ok"], interval_s=0.3, retries=2),
    )
    await put_deployment(bus, dep)
    await place(bus, "probed", 0, node_id)
    async with running_supervisor(bus, docker_settings(node_id, docker_network="none")):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        container = docker.containers.container(first.runtime_id)
        await asyncio.sleep(1.5)  # five probe intervals: passing probes keep it running
        assert events.of("restarting") == []
        rm = await container.exec(["rm", "/tmp/ok"])
        await rm.start(detach=True)
        restarting = await eventually(lambda: events.of("restarting", "probed-0"))
        assert (restarting[0].reason, restarting[0].exit_code) == ("unhealthy", 137)
        assert "health check failed 2 times, last: exit 1" in restarting[0].detail
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )
        assert again.runtime_id != first.runtime_id


async def test_paused_agent_is_restarted_for_missed_heartbeats(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str, agent_image: str
) -> None:
    node_id = node_containers
    dep = Deployment(
        name="frozen",
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
        backoff=FAST,
        heartbeat_timeout_s=4.0,
    )
    await put_deployment(bus, dep)
    await place(bus, "frozen", 0, node_id)
    async with running_supervisor(bus, docker_settings(node_id)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await eventually(registered(bus, "frozen-0"), timeout_s=60)
        await docker.containers.container(first.runtime_id).pause()  # alive, but hung
        restarting = await eventually(lambda: events.of("restarting", "frozen-0"), timeout_s=40)
        assert restarting[0].reason == "heartbeat"
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )
        assert again.runtime_id != first.runtime_id

        async def _new_instance_heartbeats() -> bool:
            info = await registered(bus, "frozen-0")()
            return info is not None and info.started_at > restarting[0].at

        await eventually(_new_instance_heartbeats, timeout_s=60)
