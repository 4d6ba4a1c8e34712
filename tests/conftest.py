"""Shared fixtures: one real nats-server per session, a fresh prefix per test.

Servers are sync and session-scoped; clients are async and per test. Each test gets
its own subject/stream/bucket prefix, so tests share one server without interfering.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agentbus.bus import Bus
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.postgres import PostgresServer

_ENV_PREFIXES = (
    "AGENTBUS_",
    "SCHEDULER_",
    "REGISTRY_",
    "SUPERVISOR_",
    "CHECKPOINT_",
    "GATEWAY_",
    "ARCHIVER_",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(_ENV_PREFIXES) and not key.startswith("AGENTBUS_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("AGENTBUS_TEST_NATS_URL"):
        yield url
        return
    with NatsServer(tmp_path_factory.mktemp("js")) as srv:
        yield srv.client_url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bus_settings(nats_url: str, prefix: str) -> BusSettings:
    return BusSettings(nats_url=nats_url, prefix=prefix, request_timeout_s=5.0)


@pytest.fixture
async def bus(bus_settings: BusSettings) -> AsyncIterator[Bus]:
    b = await Bus.connect(bus_settings, name="test")
    await b.ensure()
    yield b
    await b.close()


AGENT_IMAGE = "agentbus/agent:dev"


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The locally built agent image; a missing engine or image fails, never skips."""
    import subprocess

    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.fail(
            "no Docker engine answers: run `bash scripts/setup.sh` to install and start one"
        )
    image = subprocess.run(["docker", "image", "inspect", AGENT_IMAGE], capture_output=True)
    if image.returncode != 0:
        pytest.fail(f"image {AGENT_IMAGE} is missing: run `just images`")
    return AGENT_IMAGE


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of Debian's package, on a free port, for the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def audit_database_url(postgres: PostgresServer) -> str:
    """A fresh, empty database of ``postgres`` for one test."""
    return postgres.create_database()
