"""A killed supervisor must not leave process-runtime agents behind (one identity, one
process): its children die with it (``PR_SET_PDEATHSIG``), and a restarted supervisor
ends what survived anyway (pid files in ``SUPERVISOR_STATE_DIR``) before starting
replicas again. Real supervisor processes, real agents, real NATS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.messages import Deployment
from agentbus.settings import BusSettings
from tests._harness.polling import eventually
from tests._harness.services import end_processes
from tests._harness.supervisor import place, put_deployment, registered

AGENT = [sys.executable, "-m", "agentbus.agents.echo"]


def agent_pids(prefix: str) -> dict[str, list[int]]:
    """Agent id -> pids of live processes of this prefix whose environment names it."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or f"AGENTBUS_PREFIX={prefix}".encode() not in env:
            continue
        for var in env:
            if var.startswith(b"AGENTBUS_AGENT_ID="):
                agent_id = var.split(b"=", 1)[1].decode()
                found.setdefault(agent_id, []).append(int(entry.name))
    return {k: sorted(v) for k, v in found.items()}


def python_agents(prefix: str) -> dict[str, list[int]]:
    """``agent_pids`` without the ``sh`` wrappers: the agent processes proper."""
    result: dict[str, list[int]] = {}
    for agent_id, pids in agent_pids(prefix).items():
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm != "sh":
                result.setdefault(agent_id, []).append(pid)
    return result


@pytest.fixture
def spawned(prefix: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Supervisor processes of the test; at the end they and any agent left are ended."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    end_processes(procs)
    for pids in agent_pids(prefix).values():  # what a failed run left: the test's own
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawn(bus_settings: BusSettings, node_id: str, state_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": bus_settings.nats_url,
        "AGENTBUS_PREFIX": bus_settings.prefix,
        "SUPERVISOR_NODE_ID": node_id,
        "SUPERVISOR_RUNTIME": "process",
        "SUPERVISOR_HEARTBEAT_S": "0.5",
        "SUPERVISOR_STOP_GRACE_S": "3",
        "SUPERVISOR_STATE_DIR": str(state_dir),
    }
    cmd = [sys.executable, "-m", "agentbus_supervisor"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def registered_pids(bus: Bus, agent_ids: list[str]) -> dict[str, int] | None:
    """Agent id -> the pid in its registry entry, once every agent has one."""
    pids: dict[str, int] = {}
    for agent_id in agent_ids:
        info = await registered(bus, agent_id)()
        if info is None or info.pid is None or info.status == "stopping":
            return None
        pids[agent_id] = info.pid
    return pids


@pytest.mark.slow
async def test_killed_supervisor_leaves_one_process_per_agent(
    bus: Bus,
    bus_settings: BusSettings,
    prefix: str,
    tmp_path: Path,
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    node_id = f"{prefix}-n1"
    # Replica 0 runs the agent directly; replica 1 behind a shell that does not pass
    # signals on: the agent outlives the shell (no parent-death signal reaches it).
    direct = Deployment(
        name="orph",
        replicas=1,
        command=AGENT,
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
    )
    wrapped = Deployment(
        name="wrap",
        replicas=1,
        command=["sh", "-c", f"{' '.join(AGENT)} & wait"],
        capabilities=["echo"],
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"},
    )
    ids = ["orph-0", "wrap-0"]
    for dep in (direct, wrapped):
        await put_deployment(bus, dep)
        await place(bus, dep.name, 0, node_id)
    first = spawn(bus_settings, node_id, tmp_path)
    spawned.append(first)
    before = await eventually(lambda: registered_pids(bus, ids), timeout_s=60, what="2 agents")
    assert python_agents(prefix) == {k: [v] for k, v in before.items()}

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # The directly started agent dies with its supervisor (parent-death signal).
    await eventually(lambda: "orph-0" not in agent_pids(prefix), timeout_s=20, what="orph-0 ended")

    second = spawn(bus_settings, node_id, tmp_path)
    spawned.append(second)

    async def fresh() -> dict[str, int] | None:
        now = await registered_pids(bus, ids)
        return now if now and all(now[k] != before[k] for k in ids) else None

    after = await eventually(fresh, timeout_s=60, what="both agents restarted")
    # Exactly one agent process per id, and it is the registered one.
    assert python_agents(prefix) == {k: [v] for k, v in after.items()}
    assert before["wrap-0"] not in python_agents(prefix).get("wrap-0", [])

    # Stopping the supervisor cleanly ends every agent it runs.
    second.terminate()
    second.wait(30)
    await eventually(lambda: agent_pids(prefix) == {}, timeout_s=20, what="no agents")
