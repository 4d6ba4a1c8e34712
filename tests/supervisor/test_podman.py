"""The docker runtime against Podman's Docker-compatible API: a replica starts
unprivileged with its limits, registers, is killed, and is restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import msgspec
import pytest
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.messages import Backoff, Deployment, LogLine
from agentbus.messages.fleet import Limits
from agentbus_supervisor.docker_runtime import DockerRuntime
from tests._harness.podman import PodmanService, podman_available
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    EventLog,
    docker_settings,
    place,
    put_deployment,
    registered,
    remove_node_containers,
    replica_where,
    running_supervisor,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory, agent_image: str) -> Iterator[str]:
    """The URL of a private Podman API socket holding the agent image."""
    if why := podman_available():
        pytest.fail(why)
    with PodmanService(tmp_path_factory.mktemp("podman")) as service:
        service.load_image(agent_image)
        yield service.url


@pytest.fixture
async def podman_client(podman: str, node_id: str) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=podman)
    yield client
    await remove_node_containers(client, node_id)
    await client.close()


async def test_engine_is_recognised_as_podman(podman: str, node_id: str) -> None:
    runtime = await DockerRuntime.connect(podman, node_id=node_id, prefix="tp")
    try:
        assert (runtime.engine, runtime.init) == ("podman", False)
    finally:
        await runtime.close()


async def test_replica_on_podman_registers_and_is_restarted_after_a_kill(
    bus: Bus, podman: str, podman_client: aiodocker.Docker, node_id: str, agent_image: str
) -> None:
    events = EventLog()
    await events.start(bus)
    logs: list[LogLine] = []

    async def _on_log(msg: Msg) -> None:
        logs.append(msgspec.json.decode(msg.data, type=LogLine))

    await bus.nc.subscribe(bus.names.log_subject("pod-0"), cb=_on_log)
    dep = Deployment(
        name="pod",
        image=agent_image,
        image_command=["python", "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        backoff=Backoff(initial_s=0.1),
        limits=Limits(memory_bytes=192 * 1024 * 1024, cpus=0.5, pids=64),
    )
    await put_deployment(bus, dep)
    await place(bus, "pod", 0, node_id)
    settings = docker_settings(node_id, runtime="podman", docker_url=podman)
    async with running_supervisor(bus, settings):
        first = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running"), timeout_s=60
        )
        info = await eventually(registered(bus, "pod-0"), timeout_s=60)
        assert info.node_id == node_id

        inspect = await podman_client.containers.container(first.runtime_id).show()
        host = inspect["HostConfig"]
        assert inspect["Config"]["User"] == "10001:10001"
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (
            192 * 1024 * 1024,
            500_000_000,
            64,
        )
        assert host["Privileged"] is False
        assert "no-new-privileges" in host["SecurityOpt"]
        # Every capability dropped: the agent's bounding set, read from the host (an exec
        # would leave a conmon behind for Podman's 5 min exec-session exit delay).
        status = await asyncio.to_thread(Path(f"/proc/{inspect['State']['Pid']}/status").read_text)
        assert "CapBnd:\t0000000000000000" in status
        assert "NoNewPrivs:\t1" in status

        await podman_client.containers.container(first.runtime_id).kill()  # SIGKILL
        restarting = await eventually(lambda: events.of("restarting", "pod-0"), timeout_s=60)
        assert (restarting[0].reason, restarting[0].exit_code) == ("exit", 137)
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1),
            timeout_s=60,
        )
        assert again.runtime_id != first.runtime_id

        async def _new_instance_registered() -> bool:
            now = await registered(bus, "pod-0")()
            return now is not None and now.started_at > info.started_at

        await eventually(_new_instance_registered, timeout_s=60)
        # Its output reached the logs stream, tagged with stream and instance.
        await eventually(lambda: any(x.runtime_id == again.runtime_id for x in logs))
        assert {x.stream for x in logs} <= {"stdout", "stderr"}
