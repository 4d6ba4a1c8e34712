"""The fleet commands against a real nats-server, an in-process scheduler and two
supervisors running replicas as local processes: apply, ps, scale, delete, nodes, logs.

CLI commands run in a worker thread (``asyncio.run`` inside the command); ``logs -f``
runs as a real subprocess that is interrupted with SIGINT, as a person would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.client import Client
from agentbus.errors import ContractError
from agentbus.messages import Backoff, Deployment
from agentbus_supervisor.settings import SupervisorSettings
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import running_supervisor

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]
PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(600)"]
TALKER = [
    PY,
    "-u",
    "-c",
    "import os, sys, time\n"
    "me = os.environ['AGENTBUS_AGENT_ID']\n"
    "for i in range(10000):\n"
    "    print(f'{me} tick {i}', flush=True)\n"
    "    if i % 5 == 0: print(f'{me} warn {i}', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.1)\n",
]
CRASHER = [PY, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def fleet_yaml(**deployments: dict[str, Any]) -> str:
    """A fleet file (JSON is YAML) with these deployments; replicas never wait on agents."""
    for spec in deployments.values():
        spec.setdefault("heartbeat_timeout", None)  # the sleepers are not agents
    return json.dumps({"version": 1, "deployments": deployments}, indent=2)


class Fleet:
    """Runs CLI commands against this test's prefix."""

    def __init__(self, nats_url: str, prefix: str, tmp_path: Path) -> None:
        self.conn = ("--nats-url", nats_url, "--prefix", prefix)
        self.nats_url, self.prefix = nats_url, prefix
        self.file = tmp_path / "fleet.yaml"

    async def cli(self, *args: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(invoke, *args, *self.conn)

    async def apply(self, text: str, *extra: str) -> tuple[int, str, str]:
        self.file.write_text(text)
        return await self.cli("apply", "-f", str(self.file), *extra)

    async def ps(self, name: str | None = None) -> list[dict[str, Any]]:
        code, out, err = await self.cli("ps", *([name] if name else []), "--json")
        assert code == 0, err
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    async def ps_empty(self) -> bool:
        return not await self.ps()

    async def states(self, name: str | None = None) -> dict[str, tuple[str, str | None]]:
        """``{"<deployment>/<replica>": (state, node)}`` of the desired replicas."""
        return {
            f"{r['deployment']}/{r['replica']}": (r["state"], r["node_id"])
            for r in await self.ps(name)
            if r["desired"]
        }


@pytest.fixture
async def fleet(bus: Bus, nats_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    def node(node_id: str, zone: str) -> SupervisorSettings:
        return SupervisorSettings(
            node_id=node_id,
            runtime="process",
            heartbeat_s=0.2,
            stop_grace_s=2.0,
            labels={"zone": zone},
            capacity_cpus=4.0,
        )

    async with (
        running_scheduler(bus),
        running_supervisor(bus, node("node-a", "a")),
        running_supervisor(bus, node("node-b", "b")),
    ):
        f = Fleet(nats_url, prefix, tmp_path)
        # Placement must see both nodes first (its KV mirror lags the heartbeats a bit),
        # else a spread deployment lands on one node and, running, is never moved.
        client = Client(bus)
        probe = Deployment(
            name="probe",
            replicas=2,
            command=[PY, "-c", "pass"],
            restart_policy="never",
            heartbeat_timeout_s=None,
        )

        async def both_nodes_placed() -> bool:
            reply = await client.deploy(probe)
            return len({p.node_id for p in reply.placements}) == 2

        await eventually(both_nodes_placed, what="the scheduler sees both nodes")
        await client.delete_deployment("probe")
        await eventually(f.ps_empty, what="probe replicas stopped")
        yield f


async def test_apply_ps_scale_prune_delete(fleet: Fleet) -> None:
    text = fleet_yaml(
        sleepy={"command": SLEEPER, "replicas": 2, "resources": {"cpus": "500m"}},
        zoned={"command": SLEEPER, "node_selector": {"zone": "b"}},
    )
    code, out, err = await fleet.apply(text)
    assert code == 0, err
    assert "+ sleepy" in out and "created   2 replicas" in out
    assert "+ zoned" in out
    assert "2 created" in out

    async def all_running() -> dict[str, tuple[str, str | None]] | None:
        states = await fleet.states()
        return states if all(s == "running" for s, _ in states.values()) else None

    states = await eventually(all_running, timeout_s=60, what="replicas running")
    assert set(states) == {"sleepy/0", "sleepy/1", "zoned/0"}
    assert {states["sleepy/0"][1], states["sleepy/1"][1]} == {"node-a", "node-b"}  # spread
    assert states["zoned/0"][1] == "node-b"  # node_selector
    (row,) = await fleet.ps("zoned")
    assert (row["agent_id"], row["restarts"], row["exit_code"]) == ("zoned-0", 0, None)
    assert row["started_at"] is not None

    # The table: every replica, its node, state and uptime.
    code, out, err = await fleet.cli("ps")
    assert code == 0, err
    assert "3/3 replicas running" in out
    for label in ("sleepy/0", "sleepy/1", "zoned/0", "node-a", "node-b"):
        assert label in out

    # nodes: labels and what is placed (declared CPU against capacity).
    code, out, err = await fleet.cli("nodes", "--json")
    assert code == 0, err
    nodes = {n["node"]["node_id"]: n for n in json.loads(out)}
    assert nodes["node-a"]["node"]["labels"] == {"zone": "a"}
    assert (nodes["node-a"]["placed"], nodes["node-a"]["cpus"]) == (1, 0.5)
    assert (nodes["node-b"]["placed"], nodes["node-b"]["cpus"]) == (2, 0.5)
    code, out, err = await fleet.cli("nodes")
    assert code == 0, err
    assert "zone=a" in out and "0.5/4" in out

    # The same file again changes nothing; an edited one says what changed.
    code, out, _ = await fleet.apply(text)
    assert (code, "= sleepy", "1 unchanged" in out or "2 unchanged" in out) == (0, "= sleepy", True)
    edited = fleet_yaml(
        sleepy={
            "command": SLEEPER,
            "replicas": 3,
            "resources": {"cpus": "500m"},
            "env": {"SECRET": "s3cr3t"},
        },
        zoned={"command": SLEEPER, "node_selector": {"zone": "b"}},
    )
    code, out, err = await fleet.apply(edited)
    assert code == 0, err
    assert "~ sleepy" in out and "replicas: 1 → 3" not in out
    assert "replicas: 2 → 3" in out and "env.SECRET added" in out
    assert "s3cr3t" not in out
    assert "1 updated, 1 unchanged" in out

    # scale: only the replica count changes (the env stays as applied).
    code, out, err = await fleet.cli("scale", "sleepy=1", "zoned=2")
    assert code == 0, err
    assert "sleepy: scaled to 1 replicas" in out and "zoned: scaled to 2 replicas" in out
    code, out, _ = await fleet.cli("scale", "sleepy=1")
    assert "sleepy: already 1 replicas" in out

    async def scaled() -> bool:
        rows = await fleet.ps()
        return sorted(f"{r['deployment']}/{r['replica']}" for r in rows) == [
            "sleepy/0",
            "zoned/0",
            "zoned/1",
        ] and all(r["state"] == "running" for r in rows)

    await eventually(scaled, timeout_s=60, what="scaled to sleepy=1 zoned=2")
    assert len(await fleet.ps("sleepy")) == 1
    code, out, _ = await fleet.apply(edited, "--dry-run")
    assert "~ sleepy" in out and "replicas: 1 → 3" in out and "dry run: " in out
    assert len(await fleet.ps("sleepy")) == 1  # a dry run changes nothing

    # --prune deletes what the file no longer names.
    only_zoned = fleet_yaml(
        zoned={"command": SLEEPER, "replicas": 2, "node_selector": {"zone": "b"}}
    )
    code, out, err = await fleet.apply(only_zoned, "--prune")
    assert code == 0, err
    assert "- sleepy" in out and "deleted" in out and "= zoned" in out

    async def sleepy_gone() -> bool:
        code, _, _ = await fleet.cli("ps", "sleepy", "--json")
        return code == 1

    await eventually(sleepy_gone, timeout_s=30, what="sleepy stopped")
    code, out, err = await fleet.cli("delete", "zoned")
    assert (code, "deleted deployment zoned (2 replicas stopping)" in out) == (0, True), err
    code, _, err = await fleet.cli("delete", "zoned")
    assert (code, "deployment 'zoned' not found" in err) == (1, True)


async def test_fleet_command_errors(fleet: Fleet) -> None:
    assert (await fleet.cli("scale", "web"))[0] == 2
    code, _, err = await fleet.cli("scale", "web=-1")
    assert (code, "'web=-1': expected NAME=N with N in 0..1000" in err) == (2, True)
    code, _, err = await fleet.cli("scale", "Web=1")
    assert (code, "not a valid token" in err) == (2, True)
    code, _, err = await fleet.cli("scale", "nosuch=1")
    assert (code, "deployment 'nosuch' not found" in err) == (1, True)
    code, _, err = await fleet.cli("ps", "nosuch")
    assert (code, "deployment 'nosuch' not found" in err) == (1, True)
    code, _, err = await fleet.cli("logs", "nosuch")
    assert (code, "deployment 'nosuch' not found and no logs of it retained" in err) == (1, True)
    code, _, err = await fleet.cli("logs", "-f", "nosuch")
    assert (code, "deployment 'nosuch' not found" in err) == (1, True)
    code, _, err = await fleet.cli("logs", "web/x")
    assert (code, "expected NAME or NAME/REPLICA" in err) == (2, True)
    code, _, err = await fleet.cli("logs", "web", "--since", "yesterday")
    assert (code, "--since: expected a duration like 10m or a time" in err) == (2, True)
    code, _, err = await fleet.apply(fleet_yaml(web={"image": "x", "capabilities": ["Bad Cap"]}))
    assert (code, "capabilities[0]: capability 'Bad Cap' is not a valid token" in err) == (2, True)


async def test_scheduler_applies_the_spec_checks(bus: Bus) -> None:
    """A client that skips the file loader meets the same checks in the scheduler."""
    client = Client(bus)
    async with running_scheduler(bus):
        bad = Deployment(
            name="web",
            image="x",
            backoff=Backoff(initial_s=5, max_s=1),
            env={"AGENTBUS_PREFIX": "other"},
        )
        with pytest.raises(ContractError) as info:
            await client.deploy(bad)
        assert str(info.value) == (
            "deployment 'web': backoff.initial_s: 5 s is above the cap max_s = 1 s; "
            "env.AGENTBUS_PREFIX: is set by the supervisor for every replica"
        )
        assert await client.deployments() == {}


async def test_ps_shows_crash_loop(fleet: Fleet) -> None:
    # Marked after 3 quick restarts, then retried at the cap (30 s): the state holds.
    crash = {
        "command": CRASHER,
        "backoff": {"initial": "50ms", "max": "30s"},
        "crash_loop": {"max_restarts": 3, "window": "1m"},
        "node_selector": {"zone": "a"},
    }
    code, _, err = await fleet.apply(fleet_yaml(crash=crash))
    assert code == 0, err

    async def looping() -> dict[str, Any] | None:
        rows = await fleet.ps("crash")
        return rows[0] if rows and rows[0]["state"] == "crash-loop" else None

    row = await eventually(looping, timeout_s=60, what="crash-loop state")
    assert row["node_id"] == "node-a" and row["exit_code"] == 3 and row["restarts"] >= 3
    code, out, _ = await fleet.cli("ps")
    assert "crash-loop" in out
    code, out, _ = await fleet.cli("logs", "crash/0")
    assert code == 0 and out.count("boom\n") >= 3  # one per run, no prefix for one replica


async def test_logs_follow_live_across_nodes(fleet: Fleet) -> None:
    code, _, err = await fleet.apply(fleet_yaml(talk={"command": TALKER, "replicas": 2}))
    assert code == 0, err

    async def on_both_nodes() -> bool:
        states = await fleet.states("talk")
        return {node for state, node in states.values() if state == "running"} == {
            "node-a",
            "node-b",
        }

    await eventually(on_both_nodes, timeout_s=60, what="talkers running on both nodes")
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "agentbus.cli",
        "logs",
        "-f",
        "talk",
        *fleet.conn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen: dict[str, int] = {}
        first: dict[str, int] = {}
        # Follow until each replica printed 10 more ticks than its first line shown:
        # lines written after the CLI started, delivered while it runs.
        async with asyncio.timeout(60):
            while len(seen) < 2 or any(seen[a] < first[a] + 10 for a in seen):
                line = (await proc.stdout.readline()).decode()
                assert line, "logs -f ended early"
                agent, _, text = line.rstrip("\n").partition(" | ")
                assert text.startswith(f"{agent} tick "), line
                tick = int(text.rsplit(" ", 1)[1])
                first.setdefault(agent, tick)
                assert tick >= seen.get(agent, -1), "lines out of order"
                seen[agent] = tick
        assert set(seen) == {"talk-0", "talk-1"}
        warn = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        assert " | talk-" in warn and " warn " in warn  # stderr lines go to stderr
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0  # Ctrl-C ends a follow cleanly
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Without -f: what is retained, then exit; one replica, with timestamps.
    code, out, err = await fleet.cli("logs", "talk/1", "--since", "5m", "-t")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) > 10 and all(" talk-1 tick " in line for line in lines)
    assert lines[0].startswith("20") and lines[0].split(" ")[0].endswith("Z")
