"""The supervisor pulls a missing image; a pull that fails is a replica state with the
reason and an event. The failure path pulls from a closed local port; the success
path pulls from a real registry (``docker-registry``, the distribution v2 registry)
started on a free local port, an image the engine lacks one layer of."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.messages import Backoff, Deployment, NodeInfo
from agentbus_supervisor.docker_runtime import DockerRuntime
from agentbus_supervisor.runtime import ImagePullError, build_spec
from tests._harness.image_registry import PushedImage, pushed_image, registry_process
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    BASE_IMAGE,
    SLEEP_CMD,
    TEST_LABELS,
    EventLog,
    docker_settings,
    place,
    put_deployment,
    registered,
    replica_where,
    running_supervisor,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unpullable_image_is_a_replica_state_and_an_event(
    bus: Bus, docker: aiodocker.Docker, events: EventLog, node_containers: str
) -> None:
    node_id = node_containers
    image = f"127.0.0.1:{closed_port()}/nope:1"
    dep = Deployment(
        name="nopull",
        image=image,
        image_command=SLEEP_CMD,
        backoff=Backoff(initial_s=0.2, max_s=1.0),
    )
    await put_deployment(bus, dep)
    await place(bus, "nopull", 0, node_id)
    async with running_supervisor(bus, docker_settings(node_id, docker_network="none")):
        failed = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "image-pull-failed"),
            timeout_s=60,
            what="replica in image-pull-failed",
        )
        assert image in failed.reason
        await eventually(
            lambda: [e for e in events.of("failed") if e.reason == "image-pull-failed"],
            what="image-pull-failed event",
        )
        pulling = events.of("pulling", "nopull-0")
        assert pulling and image in pulling[0].detail
        event = next(e for e in events.of("failed") if e.reason == "image-pull-failed")
        assert image in event.detail
        # The node reports the images it has (for apply's warning); not the missing one.
        nodes_kv = await bus.kv(bus.names.nodes_bucket)
        node = msgspec.json.decode((await nodes_kv.get(node_id)).value or b"", type=NodeInfo)
        assert BASE_IMAGE in node.images
        assert image not in node.images


async def test_present_image_is_not_pulled_and_a_failed_pull_raises(
    docker: aiodocker.Docker, node_id: str
) -> None:
    runtime = await DockerRuntime.connect(node_id=node_id, prefix="p", extra_labels=TEST_LABELS)
    progress: list[str] = []

    async def report(line: str) -> None:
        progress.append(line)

    try:
        dep = Deployment(name="here", image=BASE_IMAGE, image_command=SLEEP_CMD)
        spec = build_spec(dep, 0, node_id=node_id, prefix="p", nats_url="x", runtime="docker")
        await runtime.prepare(spec, report)
        assert progress == []  # present locally: no pull, no progress
        missing = f"127.0.0.1:{closed_port()}/nope:2"
        bad = build_spec(
            Deployment(name="gone", image=missing),
            0,
            node_id=node_id,
            prefix="p",
            nats_url="x",
            runtime="docker",
        )
        with pytest.raises(ImagePullError) as info:
            await runtime.prepare(bad, report)
        assert info.value.image == missing
        assert progress and missing in progress[0]
    finally:
        await runtime.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A ``docker-registry`` on a free local port: its ``127.0.0.1:<port>``."""
    with registry_process(tmp_path) as address:
        yield address


@pytest.fixture
async def remote_image(
    docker: aiodocker.Docker, registry: str, agent_image: str
) -> AsyncIterator[PushedImage]:
    """The agent image plus one random layer, in ``registry`` and not in the engine."""
    async with pushed_image(docker, registry, agent_image) as image:
        yield image


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_missing_image_is_pulled_with_progress_and_the_agent_runs(
    bus: Bus,
    docker: aiodocker.Docker,
    events: EventLog,
    remote_image: PushedImage,
    node_containers: str,
) -> None:
    node_id, ref = node_containers, remote_image.ref
    with pytest.raises(aiodocker.DockerError) as absent:
        await docker.images.inspect(ref)
    assert absent.value.status == 404
    dep = Deployment(
        name="pulled",
        image=ref,
        capabilities=["echo"],
        image_command=["python", "-m", "agentbus.agents.echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
    )
    await put_deployment(bus, dep)
    await place(bus, "pulled", 0, node_id)
    async with running_supervisor(bus, docker_settings(node_id, images_refresh_s=0.5)):
        running = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running"),
            timeout_s=120,
            what="pulled replica running",
        )
        await eventually(registered(bus, "pulled-0"), timeout_s=60, what="agent registered")
        container = await docker.containers.container(running.runtime_id).show()
        assert container["Config"]["Image"] == ref
        assert container["State"]["Running"]
        await docker.images.inspect(ref)  # present now
        nodes_kv = await bus.kv(bus.names.nodes_bucket)

        async def node_lists_it() -> bool:
            entry = await nodes_kv.get(node_id)
            return ref in msgspec.json.decode(entry.value or b"", type=NodeInfo).images

        await eventually(node_lists_it, timeout_s=30, what="node lists the pulled image")
    lines = await eventually(
        lambda: [
            e.detail for e in events.of("pulling", "pulled-0") if e.detail.startswith("pulled ")
        ],
        what="the pull's last progress line",
    )
    n, size = remote_image.layers, remote_image.missing_layer_bytes
    assert lines == [f"pulled {ref}: {n}/{n} layers, {size} of {size} bytes"]
    assert events.of("pulling", "pulled-0")[0].detail == f"pulling {ref}"
    assert not events.of("failed", "pulled-0")
