"""Fixtures of the auth tests: a nats-server with auth on per module, TLS files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbus.auth.tls import TlsFiles, make_tls_files
from tests._harness.auth import AuthServer, auth_server
from tests._harness.nats_server import NatsServer


@pytest.fixture(scope="module")
def secured() -> Iterator[AuthServer]:
    with auth_server() as server:
        yield server
        for line in server.server.violations:  # shown with a failing test's output
            print(line)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    files, _ = make_tls_files(tmp_path_factory.mktemp("tls"))
    return files


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Files of another CA: its certificates do not verify against ``tls_files``."""
    files, _ = make_tls_files(tmp_path_factory.mktemp("other-tls"))
    return files


@pytest.fixture(scope="session")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[NatsServer]:
    """A nats-server that requires TLS and a client certificate signed by the CA."""
    with NatsServer(
        Path(tmp_path_factory.mktemp("js-tls")), tls=tls_files, verify_clients=True
    ) as srv:
        yield srv
