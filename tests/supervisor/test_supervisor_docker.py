"""The supervisor service with the real Docker engine: reconcile, restart, adoption."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import pytest

from agentbus.bus import Bus
from agentbus.messages import Backoff, Deployment
from agentbus_supervisor.docker_runtime import DockerRuntime
from agentbus_supervisor.runtime import build_spec
from agentbus_supervisor.settings import SupervisorSettings
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    BASE_IMAGE,
    SLEEP_CMD,
    TEST_LABELS,
    EventLog,
    docker_settings,
    place,
    put_deployment,
    replica_where,
    running_supervisor,
    status_of,
    unplace,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def settings(node_id: str, **kw: Any) -> SupervisorSettings:
    """Heartbeats every 0.2 s; no network (these containers are no agents)."""
    return docker_settings(node_id, **({"heartbeat_s": 0.2, "docker_network": "none"} | kw))


async def containers_of(docker: aiodocker.Docker, node_id: str) -> list[dict[str, object]]:
    filters = json.dumps({"label": [f"agentbus.node={node_id}"]})
    return [c._container for c in await docker.containers.list(all=True, filters=filters)]


def sleeper() -> Deployment:
    return Deployment(
        name="sleeper", image=BASE_IMAGE, image_command=SLEEP_CMD, backoff=Backoff(initial_s=0.1)
    )


async def test_reconcile_restart_after_kill_and_unplace(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str
) -> None:
    node_id = node_containers
    await put_deployment(bus, sleeper())
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, settings(node_id)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        info = await docker.containers.container(first.runtime_id).show()
        assert info["Name"] == f"/{bus.names.prefix}-{node_id}-sleeper-0"
        assert info["State"]["Running"]
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert env["AGENTBUS_PREFIX"] == bus.names.prefix
        assert env["AGENTBUS_NATS_URL"] == bus.settings.nats_url

        await docker.containers.container(first.runtime_id).kill()  # `docker kill`
        second = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )
        assert second.runtime_id != first.runtime_id
        restarting = events.of("restarting", "sleeper-0")
        assert len(restarting) == 1
        assert restarting[0].restarts == 1
        assert restarting[0].exit_code == 137
        assert [c["Id"] for c in await containers_of(docker, node_id)] == [second.runtime_id]

        await unplace(bus, "sleeper", 0)
        await eventually(lambda: events.of("stopped", "sleeper-0"))
        assert await containers_of(docker, node_id) == []
        assert (await status_of(bus, node_id)()).replicas == []


async def test_restarted_supervisor_adopts_its_container(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str
) -> None:
    node_id = node_containers
    await put_deployment(bus, sleeper())
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, settings(node_id, stop_replicas_on_exit=False)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
    # The first supervisor is gone; its container runs on.
    left = await containers_of(docker, node_id)
    assert [c["Id"] for c in left] == [first.runtime_id]
    assert left[0]["State"] == "running"

    async with running_supervisor(bus, settings(node_id)):
        adopted = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        assert adopted.runtime_id == first.runtime_id  # no duplicate started
        assert adopted.restarts == 0
        assert [c["Id"] for c in await containers_of(docker, node_id)] == [first.runtime_id]
        started = events.of("started", "sleeper-0")
        assert [e.reason for e in started] == ["placed", "adopted"]
    # This supervisor stops its replicas on exit.
    assert await containers_of(docker, node_id) == []


async def test_changed_spec_is_not_adopted(
    bus: Bus, docker: aiodocker.Docker, node_containers: str
) -> None:
    node_id = node_containers
    await put_deployment(bus, sleeper())
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, settings(node_id, stop_replicas_on_exit=False)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
    changed = Deployment(
        name="sleeper", image=BASE_IMAGE, image_command=SLEEP_CMD, env={"VERSION": "2"}
    )
    await put_deployment(bus, changed)
    async with running_supervisor(bus, settings(node_id)):
        now = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        assert now.runtime_id != first.runtime_id
        info = await docker.containers.container(now.runtime_id).show()
        assert "VERSION=2" in info["Config"]["Env"]
        assert [c["Id"] for c in await containers_of(docker, node_id)] == [now.runtime_id]


async def test_only_own_containers_are_touched(
    bus: Bus,
    docker: aiodocker.Docker,
    node_containers: str,
    make_container: Callable[..., Awaitable[str]],
) -> None:
    node_id = node_containers
    prefix = bus.names.prefix
    foreign = await make_container(
        {
            "agentbus.managed": "1",
            "agentbus.node": "another-node",
            "agentbus.prefix": prefix,
            "agentbus.deployment": "sleeper",
            "agentbus.replica": "0",
        }
    )
    other_fleet = await make_container(
        {
            "agentbus.managed": "1",
            "agentbus.node": node_id,
            "agentbus.prefix": "otherfleet",
            "agentbus.deployment": "sleeper",
            "agentbus.replica": "0",
        }
    )
    # A leftover of this node that is no longer placed anywhere: the supervisor removes it.
    runtime = await DockerRuntime.connect(
        node_id=node_id, prefix=prefix, network="none", extra_labels=TEST_LABELS
    )
    try:
        spec = build_spec(
            sleeper(), 5, node_id=node_id, prefix=prefix, nats_url="nats://x:1", runtime="docker"
        )
        stale = await runtime.start(spec)
    finally:
        await runtime.close()
    await put_deployment(bus, sleeper())
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, settings(node_id)):
        mine = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))

        async def _stale_gone() -> bool:
            ids = {c["Id"] for c in await containers_of(docker, node_id)}
            return stale.runtime_id not in ids

        await eventually(_stale_gone)
        assert mine.runtime_id not in (foreign, other_fleet)
    for cid in (foreign, other_fleet):
        info = await docker.containers.container(cid).show()
        assert info["State"]["Running"], "a container of another node or fleet was touched"


async def test_missing_image_is_reported_failed(
    bus: Bus, events: EventLog, node_containers: str
) -> None:
    """A missing image is pulled; with no registry reachable the pull fails."""
    node_id = node_containers
    await put_deployment(bus, Deployment(name="ghost", image="agentbus-test/missing:never"))
    await place(bus, "ghost", 0, node_id)
    async with running_supervisor(bus, settings(node_id)):
        failed = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "image-pull-failed")
        )
        assert "agentbus-test/missing:never" in failed.reason
        assert failed.runtime_id == ""
        await eventually(lambda: events.of("failed", "ghost-0"))


async def test_supervisor_stopping_mid_reconcile_still_removes_the_container(
    bus: Bus, docker: aiodocker.Docker, node_containers: str
) -> None:
    node_id = node_containers
    # Ignores SIGTERM, so `docker stop` runs its whole grace period (2 s).
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn = ["python3", "-c", f"{ignore_term}; time.sleep(600)"]
    await put_deployment(bus, Deployment(name="stubborn", image=BASE_IMAGE, image_command=stubborn))
    await place(bus, "stubborn", 0, node_id)
    async with running_supervisor(bus, settings(node_id)):
        await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await unplace(bus, "stubborn", 0)
        # Stop the supervisor while the reconcile's `docker stop` is still waiting.
        await eventually(status_of_empty(bus, node_id))
    assert await containers_of(docker, node_id) == []


def status_of_empty(bus: Bus, node_id: str) -> Callable[[], Awaitable[bool]]:
    status = status_of(bus, node_id)

    async def _empty() -> bool:
        return (await status()).replicas == []

    return _empty
