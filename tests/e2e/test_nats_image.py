"""The compose stack's NATS image, started through testcontainers.

``agentbus/nats:dev`` must come up healthy with JetStream on its ``/data`` volume and
keep what it stored across a container replacement (what ``just up`` relies on with
the ``nats-data`` volume). The locally built image is used; Ryuk stays disabled.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from agentbus.bus import Bus
from agentbus.settings import BusSettings

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]
IMAGE = "agentbus/nats:dev"


def start_nats(data: Path) -> DockerContainer:
    """Start the image on ``data``; return once its own HEALTHCHECK says healthy."""
    container = (
        DockerContainer(IMAGE)
        .with_exposed_ports(4222)
        .with_volume_mapping(str(data), "/data", mode="rw")
        .waiting_for(HealthcheckWaitStrategy().with_startup_timeout(60))
    )
    try:
        container.start()
    except BaseException:
        container.stop()
        raise
    return container


def url(container: DockerContainer) -> str:
    return f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    probe = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"image {IMAGE} is missing: run `just images`")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the image runs nats-server as its own non-root user
    return data


async def test_nats_image_is_healthy_and_keeps_its_streams(data_dir: Path) -> None:
    first = start_nats(data_dir)
    try:
        bus = await Bus.connect(BusSettings(nats_url=url(first), prefix="img"))
        try:
            await bus.ensure()
            ack = await bus.js.publish("img.events.test.kept", b"kept")
        finally:
            await bus.close()
    finally:
        first.stop()
    second = start_nats(data_dir)
    try:
        bus = await Bus.connect(BusSettings(nats_url=url(second), prefix="img"))
        try:
            msg = await bus.js.get_msg(bus.names.events_stream, ack.seq)
            assert msg.data == b"kept"
        finally:
            await bus.close()
    finally:
        second.stop()
