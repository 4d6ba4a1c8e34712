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
from typing import Any

import pytest

from agentbus.auth.authority import init_auth
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import NODE_ID, SERVICES, EmbeddedStack, ping_services
from agentbus.errors import AuthenticationError
from agentbus.settings import BusSettings
from tests._harness.services import pid_alive

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
        # authentication is on: the operator creds work, no creds are refused
        assert stack.settings.creds_file is not None
        with pytest.raises(AuthenticationError, match="Authorization Violation"):
            await Bus.connect(BusSettings(nats_url=stack.nats_url, prefix="e2eping"))
    await asyncio.sleep(0)
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not stack.log_dir.exists()


async def test_a_stack_with_incomplete_auth_files_refuses_to_start(tmp_path: Path) -> None:
    auth = init_auth(tmp_path / "auth")
    (auth.path / "account.jwt").unlink()
    stack = EmbeddedStack(runtime="process", prefix="e2enoauth", auth_dir=auth.path)
    with pytest.raises(AuthenticationError) as raised:
        await stack.start()
    message = str(raised.value)
    assert "incomplete" in message and "account.jwt" in message
    assert f"agentbus auth init {auth.path}" in message and "--no-auth" in message
    assert stack.pids == {}  # nothing was started, least of all an open nats-server


def test_embedded_command_refuses_incomplete_auth_files(agentbus_home: Path) -> None:
    env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
    init_auth(agentbus_home / "auth")
    (agentbus_home / "auth" / "server.conf").unlink()
    done = _run_cli("embedded", "--runtime", "process", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "server.conf" in done.stderr and "refusing to start" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (agentbus_home / "embedded.json").exists()


def _run_cli(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def check_fleet_commands(env: dict[str, str]) -> None:
    """deploy, agents, submit --wait, task and undeploy against the running stack."""
    command = f"{sys.executable} -m agentbus.agents.echo"
    dep = _run_cli(
        "deploy", "echoes", "--command", command, "-c", "echo", "--replicas", "2", env=env
    )
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
    failed = _run_cli(
        "submit", "echo", '{"fail": "boom"}', "--wait", "--max-attempts", "1", env=env
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "boom" in json.loads(failed.stdout)["error"]["message"]
    gone = _run_cli("undeploy", "echoes", env=env)
    assert gone.returncode == 0, gone.stderr


def test_embedded_command_writes_state_and_stops_on_sigint(agentbus_home: Path) -> None:
    env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
    state_file = agentbus_home / "embedded.json"
    proc = subprocess.Popen(
        [*CLI, "embedded", "--runtime", "process", "--prefix", "e2ecli"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = _wait_state(state_file, proc)
        assert state["prefix"] == "e2ecli"
        assert state["nats_url"].startswith("nats://127.0.0.1:")
        assert state["gateway_url"].startswith("http://127.0.0.1:")
        assert set(state["pids"]) == {"nats-server", *SERVICES}
        # auth on by default, keys made on first use in $AGENTBUS_HOME/auth
        assert state["creds_file"] == str(agentbus_home / "auth" / "creds" / "operator.creds")
        # other commands find the stack, and its operator creds, through the state file alone
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


def _start_embedded(env: dict[str, str], prefix: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "embedded", "--runtime", "process", "--prefix", prefix, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_state(path: Path, proc: subprocess.Popen[str], timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        if path.exists():
            state: dict[str, Any] = json.loads(path.read_text() or "{}")
            if state.get("nats_url") and state.get("owner_pid") == proc.pid:
                return state
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"no ready state in {path} within {timeout_s} s"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_a_second_stack_refuses_or_keeps_its_own_state_file(agentbus_home: Path) -> None:
    env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
    env.pop("AGENTBUS_NATS_URL", None)
    default_file = agentbus_home / "embedded.json"
    other_file = agentbus_home / "other.json"
    procs: list[subprocess.Popen[str]] = []
    try:
        # two started together: one runs, the other refuses before starting anything
        first, second = _start_embedded(env, "e2eone"), _start_embedded(env, "e2etwo")
        procs += [first, second]
        deadline = time.monotonic() + 90
        while first.poll() is None and second.poll() is None:
            assert time.monotonic() < deadline, "neither stack refused within 90 s"
            time.sleep(0.2)
        refused, live = (first, second) if first.poll() is not None else (second, first)
        out = refused.stdout.read() if refused.stdout else ""
        assert refused.returncode == 1, out
        assert "already running" in out and f"pid {live.pid}" in out, out
        assert str(default_file) in out, out
        state = _wait_state(default_file, live)  # owned by the live one

        # a separate state file: a second stack runs beside the first
        other = _start_embedded(env, "e2eother", "--state-file", str(other_file))
        procs.append(other)
        other_state = _wait_state(other_file, other)
        assert other_state["nats_url"] != state["nats_url"]

        # the environment's URL wins over the state file, and the CLI says so
        both = {
            **env,
            "AGENTBUS_NATS_URL": str(other_state["nats_url"]),
            "AGENTBUS_PREFIX": "e2eother",
            "AGENTBUS_CREDS_FILE": str(other_state["creds_file"]),  # not the state's stack
        }
        ping = _run_cli("ping", env=both)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "AGENTBUS_NATS_URL" in ping.stderr and str(state["nats_url"]) in ping.stderr
        explicit = _run_cli(
            "ping",
            "--nats-url",
            str(other_state["nats_url"]),
            "--prefix",
            "e2eother",
            env={**env, "AGENTBUS_CREDS_FILE": str(other_state["creds_file"])},
        )
        assert explicit.returncode == 0 and explicit.stderr == "", explicit.stderr

        # stopping one removes only its own state file
        _stop(other)
        assert not other_file.exists()
        assert json.loads(default_file.read_text())["owner_pid"] == live.pid
        ping = _run_cli("ping", env=env)
        assert ping.returncode == 0 and "scheduler    ok" in ping.stdout, ping.stdout
        _stop(live)
        assert not default_file.exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _connect_anonymously(nats_url: str) -> None:
    bus = await Bus.connect(BusSettings(nats_url=nats_url))
    await bus.close()


def test_a_stale_state_file_is_taken_over(agentbus_home: Path) -> None:
    env = {**os.environ, "AGENTBUS_HOME": str(agentbus_home)}
    state_file = agentbus_home / "embedded.json"
    agentbus_home.mkdir(parents=True, exist_ok=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    state_file.write_text(
        json.dumps(
            {
                "nats_url": "nats://127.0.0.1:4999",
                "gateway_url": "",
                "prefix": "x",
                "pids": {"nats-server": dead_pid},
                "owner_pid": dead_pid,
            }
        )
    )
    proc = _start_embedded(env, "e2estale", "--no-auth")
    try:
        state = _wait_state(state_file, proc)
        assert state["nats_url"] != "nats://127.0.0.1:4999"  # taken over by the new stack
        assert state["creds_file"] == ""  # --no-auth: anyone may connect
        asyncio.run(_connect_anonymously(state["nats_url"]))
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not state_file.exists()
