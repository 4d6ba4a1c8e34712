"""Embedded mode end to end: a real nats-server and the five services as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import NODE_ID, SERVICES, EmbeddedStack, ping_services
from tests._helpers import pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
CLI = [sys.executable, "-m", "agentbus.cli"]


async def test_all_five_services_answer_ping() -> None:
    stack = EmbeddedStack(runtime="process", prefix="e2eping")
    async with stack:
        pids = stack.pids
        assert set(pids) == {"nats-server", *SERVICES}
        bus = await Bus.connect(stack.settings)
        try:
            assert await ping_services(bus.nc, prefix="e2eping") == set(SERVICES)
            assert await ping_services(bus.nc, prefix="otherprefix") == set()
            nodes = await Client(bus).nodes()
            assert [n.node_id for n in nodes] == [NODE_ID]
            assert nodes[0].runtime == "process"
        finally:
            await bus.close()
    await asyncio.sleep(0)
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not stack.log_dir.exists()


def _run_cli(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def check_fleet_commands(env: dict[str, str]) -> None:
    """deploy, agents, submit --wait, task and undeploy against the running stack."""
    command = f"{sys.executable} -m agentbus.agents.echo"
    dep = _run_cli("deploy", "echoes", "--command", command, "-c", "echo", "--replicas", "2",
                   env=env)  # fmt: skip
    assert dep.returncode == 0, dep.stdout + dep.stderr
    assert NODE_ID in dep.stdout
    deadline = time.monotonic() + 60
    while (listed := _run_cli("agents", "--capability", "echo", env=env)).stdout.count(
        "echoes/"
    ) < 2:
        assert time.monotonic() < deadline, listed.stdout + listed.stderr
        time.sleep(0.5)
    ok = _run_cli("submit", "echo", '{"hello": [1, 2]}', "--wait", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    record = json.loads(ok.stdout)
    assert record["status"] == "succeeded"
    assert record["output"] == {"hello": [1, 2]}
    again = _run_cli("task", record["task_id"], env=env)
    assert json.loads(again.stdout)["output"] == {"hello": [1, 2]}
    failed = _run_cli("submit", "echo", '{"fail": "boom"}', "--wait", "--max-attempts", "1",
                      env=env)  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "boom" in json.loads(failed.stdout)["error"]["message"]
    gone = _run_cli("undeploy", "echoes", env=env)
    assert gone.returncode == 0, gone.stderr


def test_embedded_command_writes_state_and_stops_on_sigint(agentbus_home: Path) -> None:
    env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
    state_file = agentbus_home / "embedded.json"
    proc = subprocess.Popen(
        [*CLI, "embedded", "--runtime", "process", "--prefix", "e2ecli"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not state_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no state file within 90 s"
            time.sleep(0.2)
        state = json.loads(state_file.read_text())
        assert state["prefix"] == "e2ecli"
        assert state["nats_url"].startswith("nats://127.0.0.1:")
        assert state["gateway_url"].startswith("http://127.0.0.1:")
        assert set(state["pids"]) == {"nats-server", *SERVICES}
        # other commands find the stack through the state file alone
        ping = _run_cli("ping", env=env)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        for name in SERVICES:
            assert f"{name:<12} ok" in ping.stdout
        nodes = _run_cli("nodes", env=env)
        assert nodes.returncode == 0, nodes.stderr
        assert NODE_ID in nodes.stdout
        check_fleet_commands(env)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not state_file.exists()
    assert not any(pid_alive(pid) for pid in state["pids"].values())
