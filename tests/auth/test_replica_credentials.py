"""A supervisor mints each replica's credentials, hands them over as a file, and
revokes them when the replica ends."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from agentbus.auth import nats_jwt
from agentbus.auth.creds import creds_jwt
from agentbus.auth.provision import provision_agent
from agentbus.bus import Bus
from agentbus.errors import AuthenticationError
from agentbus.settings import BusSettings
from agentbus_supervisor.credentials import ReplicaCredentials
from tests._harness.auth import AuthServer, supervised_fleet
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    echo_process,
    process_settings,
    registered,
)

pytestmark = pytest.mark.timeout(120)


async def test_replica_gets_own_credentials_as_a_file_and_loses_them_when_it_ends(
    secured: AuthServer, prefix: str, tmp_path: Path
) -> None:
    creds_dir = tmp_path / "creds"
    settings = process_settings(
        "n1", auth_dir=secured.auth.path, creds_dir=creds_dir, state_dir=tmp_path / "state"
    )
    seen = len(secured.server.violations)
    async with supervised_fleet(secured, prefix, settings) as client:
        operator = client.bus
        await client.deploy(echo_process("echo"))
        info = await eventually(registered(operator, "echo-0"), timeout_s=30)
        creds_file = creds_dir / "echo-0" / "agent.creds"
        assert creds_file.exists()
        assert stat.S_IMODE(creds_dir.stat().st_mode) == 0o700
        # The process got the path, not the secret.
        environ_file = Path(f"/proc/{info.pid}/environ")
        environ = (await asyncio.to_thread(environ_file.read_bytes)).split(b"\0")
        assert f"AGENTBUS_CREDS_FILE={creds_file}".encode() in environ
        text = creds_file.read_text()
        secrets = [line.encode() for line in text.splitlines() if line.startswith(("ey", "SU"))]
        assert len(secrets) == 2  # the JWT and the seed, in no environment value
        assert not any(secret in e for secret in secrets for e in environ)
        task = await client.submit("echo", "hi")
        record = await client.wait(task.task_id, timeout_s=30)
        assert record.status == "succeeded"
        copy = tmp_path / "stolen.creds"
        copy.write_text(creds_file.read_text())
        os.chmod(copy, 0o600)
        stolen = BusSettings(nats_url=secured.url, prefix=prefix, creds_file=copy)
        await (await Bus.connect(stolen)).close()  # works while the replica lives

        await client.scale("echo", 0)
        await eventually(lambda: not creds_file.exists(), timeout_s=30, what="file deleted")

        async def refused() -> bool:
            try:
                await (await Bus.connect(stolen)).close()
            except AuthenticationError:
                return True
            return False

        await eventually(refused, timeout_s=10, what="revoked credentials refused")
    violations = secured.server.violations_since(seen)
    assert not [v for v in violations if "stolen" not in v and "Authorization" not in v], violations


async def test_renewed_credentials_keep_a_replica_connected_past_their_first_expiry(
    secured: AuthServer, prefix: str, tmp_path: Path
) -> None:
    creds_dir = tmp_path / "creds"
    settings = process_settings(
        "n2",
        auth_dir=secured.auth.path,
        creds_dir=creds_dir,
        state_dir=tmp_path / "state",
        replica_creds_ttl_s=4.0,  # renewed every 2 s
    )
    async with supervised_fleet(secured, prefix, settings) as client:
        operator = client.bus
        await client.deploy(echo_process("echo"))
        first = await eventually(registered(operator, "echo-0"), timeout_s=30)
        creds_file = creds_dir / "echo-0" / "agent.creds"
        expires_at = nats_jwt.decode(creds_jwt(creds_file))["exp"]
        await eventually(lambda: time.time() > expires_at + 3, timeout_s=15)
        task = await client.submit("echo", "still here")
        record = await client.wait(task.task_id, timeout_s=30)
        assert record.status == "succeeded"
        now = await eventually(registered(operator, "echo-0"), timeout_s=10)
        assert now.pid == first.pid  # the same process: reconnected, not restarted
        assert nats_jwt.decode(creds_jwt(creds_file))["exp"] > expires_at


async def test_a_restart_does_not_wait_for_its_consumers_and_still_heals_them(
    secured: AuthServer, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's first start waits for its consumers; a restart of it (same deployment)
    is handed its credentials at once and the consumers are made again behind it, so
    one deleted meanwhile comes back."""
    bus = await Bus.connect(secured.operator(prefix))
    stop = asyncio.Event()
    credentials = ReplicaCredentials(bus, secured.auth.path, tmp_path / "creds")
    renewing = asyncio.create_task(credentials.renew(stop))
    deployment = echo_process("echo")
    names, stream = bus.names, bus.names.tasks_stream
    try:
        await bus.ensure()
        await credentials.issue(deployment, "echo-0")
        await bus.js.consumer_info(stream, names.task_consumer("echo"))  # made
        await bus.js.delete_consumer(stream, names.task_consumer("echo"))

        gate = asyncio.Event()
        real = provision_agent

        async def gated(*args: Any, **kwargs: Any) -> None:
            await gate.wait()  # a slow server: new consumer leaders being elected
            await real(*args, **kwargs)

        monkeypatch.setattr("agentbus_supervisor.credentials.provision_agent", gated)
        path = await asyncio.wait_for(credentials.issue(deployment, "echo-0"), 5)
        assert path.exists()
        gate.set()

        async def healed() -> bool:
            try:
                await bus.js.consumer_info(stream, names.task_consumer("echo"))
            except nats.js.errors.NotFoundError:
                return False
            return True

        await eventually(healed, timeout_s=10, what="the deleted consumer made again")
    finally:
        stop.set()
        await renewing
        await bus.close()
