"""The embedded stack with TLS on: nats-server requiring client certificates, the five
services, an agent the supervisor starts, the CLI and the gateway over HTTPS."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agentbus.auth.tokens import create_token
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.errors import UnavailableError
from agentbus.messages import Deployment
from agentbus.settings import BusSettings
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_embedded_stack_over_tls(tmp_path: Path, agentbus_home: Path) -> None:
    tls_dir = tmp_path / "tls"
    stack = EmbeddedStack(
        runtime="process",
        prefix="e2etls",
        tls_dir=tls_dir,
        verify_clients=True,
        write_state=True,
        state_file=agentbus_home / "embedded.json",
    )
    async with stack:
        assert stack.nats_url.startswith("tls://127.0.0.1:")
        assert stack.gateway_url.startswith("https://")
        assert (tls_dir / "ca.pem").exists()  # made on start
        plain = BusSettings(nats_url=stack.nats_url, prefix="e2etls", connect_timeout_s=2)
        with pytest.raises(UnavailableError, match="TLS handshake"):
            await Bus.connect(plain)

        bus = await Bus.connect(stack.settings)
        try:
            client = Client(bus)
            command = [sys.executable, "-m", "agentbus.agents.echo"]
            await client.deploy(Deployment(name="echoes", command=command, capabilities=["echo"]))
            await eventually(lambda: _echo_agents(client), timeout_s=60, what="echo agent over TLS")
            record = await client.submit("echo", {"over": "tls"})
            done = await client.wait(record.task_id, timeout_s=30)
            assert done.status == "succeeded"
            assert await client.output(done) == {"over": "tls"}
            _, secret = await create_token(bus, "tls-test", ["tasks:submit", "tasks:read"])
        finally:
            await bus.close()

        # the CLI finds the URL and the TLS files in the state file
        env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
        ping = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agentbus.cli", "ping"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "gateway" in ping.stdout

        trust = ssl.create_default_context(cafile=tls_dir / "ca.pem")
        bearer = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            base_url=stack.gateway_url, verify=trust, headers=bearer
        ) as http:
            health = await http.get("/healthz")
            assert health.status_code == 200, health.text
            submitted = await http.post("/v1/tasks", json={"capability": "echo", "input": [1, 2]})
            assert submitted.status_code in (200, 201, 202), submitted.text
            task_id = submitted.json()["task_id"]
            waited = await http.get(f"/v1/tasks/{task_id}", params={"wait_s": 20})
            assert waited.json()["status"] == "succeeded", waited.text
        assert json.loads((agentbus_home / "embedded.json").read_text())["tls_dir"] == str(tls_dir)


async def _echo_agents(client: Client) -> bool:
    return len(await client.agents(capability="echo")) >= 1
