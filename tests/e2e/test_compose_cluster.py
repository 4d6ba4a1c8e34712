"""`just up cluster` / `just down`: the compose stack on three clustered nats-servers.

Every stream R3 with a leader, a task runs in an agent container; with one server
stopped the streams keep quorum and the next task runs too; `just down` removes the
three servers' volumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
import pytest

from agentbus.client import Client
from agentbus.messages import Deployment
from agentbus.settings import BusSettings
from tests._harness.browser import artifacts_dir
from tests._harness.polling import eventually

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
AUTH_DIR = ROOT / "compose" / ".auth"
URLS = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
OPERATOR = BusSettings(nats_url=URLS, creds_file=AUTH_DIR / "creds" / "operator.creds")
SERVERS = ["nats-1", "nats-2", "nats-3"]


def just(*args: str, timeout_s: float = 600) -> None:
    done = subprocess.run(
        ["just", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"just {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def cluster_status() -> dict[str, Any]:
    """`agentbus cluster --json` as an operator runs it (sys.creds beside the operator's)."""
    done = subprocess.run(
        ["uv", "run", "agentbus", "cluster", "--json", "--nats-url", URLS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**_env(), "AGENTBUS_CREDS_FILE": str(OPERATOR.creds_file)},
    )
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}


def save_logs() -> Path:
    """The stack's and its agents' logs, for reading after a failure."""
    path = artifacts_dir() / "compose-cluster.log"
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    compose += ["-p", "agentbus"]
    for f in ("compose.yaml", "compose.cluster.yaml"):
        compose += ["-f", str(ROOT / "compose" / f)]
    with path.open("w") as out:
        subprocess.run(
            [*compose, "logs", "--no-color", "--timestamps"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AGENTBUS_COMPOSE_AUTH_DIR": str(AUTH_DIR)},
            timeout=60,
            check=False,
        )
        agents = subprocess.run(
            ["docker", "ps", "-aq", "--filter", "label=agentbus.node=compose-node-1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.split()
        for agent in agents:
            out.write(f"--- agent container {agent}\n")
            out.flush()
            subprocess.run(
                ["docker", "logs", "--timestamps", agent],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
    return path


def digest(path: Path, *, limit: int = 200) -> str:
    """What to read first in the saved logs: warnings, errors, fencing, agents' lines."""
    keep = ("WARNING", "ERROR", "[WRN]", "[ERR]", "fence", "agent container", "placed")
    agent = False
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        agent = agent or line.startswith("--- agent container")
        if agent or any(k in line for k in keep):
            lines.append(line[:400])
    return f"{path} (digest, last {limit} lines):\n" + "\n".join(lines[-limit:])


@pytest.fixture
def cluster_stack(agent_image: str) -> Iterator[None]:
    try:
        just("up", "cluster")  # a failed start is cleaned up too
        yield
    finally:
        try:
            print(digest(save_logs()))  # pytest shows it when the test fails
        except Exception as exc:  # never keep the stack up for want of its logs
            print(f"logs not saved: {exc!r}")
        just("down")


async def run_echo(client: Client, value: list[int]) -> None:
    task = await client.submit("echo", value)
    done = await client.wait(task.task_id, timeout_s=90)
    assert done.status == "succeeded", done
    assert msgspec.json.decode(done.output) == value


async def test_cluster_stack_replicates_and_survives_a_stopped_server(
    cluster_stack: None,
) -> None:
    status = await asyncio.to_thread(cluster_status)
    assert status["cluster"] == "agentbus"
    assert [(s["name"], s["state"]) for s in status["servers"]] == [(n, "ok") for n in SERVERS]
    assert status["meta_leader"] in SERVERS
    for s in status["streams"]:
        assert (s["replicas"], s["wanted_replicas"]) == (3, 3), s
        assert s["leader"] in SERVERS and not s["lost_quorum"], s
    assert [n["node_id"] for n in status["nodes"]] == ["compose-node-1"]

    client = await Client.connect(OPERATOR)
    try:
        command = ["python", "-m", "agentbus.agents.echo"]
        await client.deploy(
            Deployment(
                name="cluster-echo",
                image="agentbus/agent:dev",
                image_command=command,
                capabilities=["echo"],
            )
        )
        await eventually(lambda: client.agents("echo"), timeout_s=90, what="an echo agent")
        await run_echo(client, [1, 2])

        async with aiodocker.Docker() as docker:
            (nats3,) = await docker.containers.list(
                filters={"label": ["com.docker.compose.service=nats-3"]}
            )
            await nats3.stop(t=0)

        def quorum_without_nats3() -> dict[str, Any] | None:
            st = cluster_status()
            state = {s["name"]: s["state"] for s in st["servers"]}
            ok = not st["streams_error"] and all(
                s["leader"] in ("nats-1", "nats-2") and not s["lost_quorum"] for s in st["streams"]
            )
            return st if ok and state["nats-3"] == "offline" else None

        await eventually(
            lambda: asyncio.to_thread(quorum_without_nats3),
            timeout_s=60,
            every_s=1.0,
            what="streams led by nats-1/2 with nats-3 offline",
        )
        await run_echo(client, [3, 4])
    finally:
        await client.close()
