"""Fixtures of the auth tests: one nats-server with auth on per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._harness.auth import AuthServer, auth_server


@pytest.fixture(scope="module")
def secured() -> Iterator[AuthServer]:
    with auth_server() as server:
        yield server
        for line in server.server.violations:  # shown with a failing test's output
            print(line)
