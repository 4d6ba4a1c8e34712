"""Warm spares with the process runtime: a dead replica's successor is a spare that was
already started and imported; the pool refills; a spare that dies is replaced; a spare
gets no identity it was not given."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import Backoff, Deployment
from agentbus.runtime.spare import SPARE_DIR_ENV
from agentbus_supervisor import warm_pool
from tests._harness.polling import eventually
from tests._harness.services import pid_alive
from tests._harness.supervisor import (
    EventLog,
    place,
    process_settings,
    put_deployment,
    registered,
    replica_where,
    running_supervisor,
    unplace,
)

pytestmark = pytest.mark.timeout(120)
ECHO = [sys.executable, "-m", "agentbus.agents.echo"]
FAST = Backoff(initial_s=0.1, factor=2.0, max_s=1.0, jitter=0.0)


def spare_pids(state_dir: Path) -> set[int]:
    """Live processes started as spares of this node (their initial env names a FIFO)."""
    found = set()
    marker = f"{SPARE_DIR_ENV}={state_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in environ and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.add(int(entry.name))
    return found


def spare_dirs(state_dir: Path) -> list[Path]:
    """Spare directories left under the node's creds directory."""
    return list(state_dir.glob("creds/*-spare-*"))


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_dead_replica_is_replaced_by_a_warm_spare(
    bus: Bus, events: EventLog, node_id: str, tmp_path: Path
) -> None:
    dep = Deployment(name="warm", command=ECHO, capabilities=["echo"], warm_spares=2, backoff=FAST)
    await put_deployment(bus, dep)
    await place(bus, "warm", 0, node_id)
    await place(bus, "warm", 1, node_id)
    registry = CollectorRegistry()
    settings = process_settings(node_id, state_dir=tmp_path)
    async with running_supervisor(bus, settings, registry):
        first = await eventually(registered(bus, "warm-0"), timeout_s=30)
        assert first.pid is not None
        await eventually(
            lambda: gauge(registry, "agentbus_supervisor_warm_spares") == 2 or None, timeout_s=30
        )  # both told the pool they wait for an identity
        waiting = spare_pids(tmp_path)
        assert len(waiting) == 2
        assert first.pid not in waiting  # the replicas themselves started cold

        os.killpg(first.pid, signal.SIGKILL)

        async def replaced() -> int | None:
            info = await registered(bus, "warm-0")()
            return info.pid if info is not None and info.pid != first.pid else None

        pid = await eventually(replaced, timeout_s=30)
        assert pid in waiting  # a spare started before the kill took the identity
        info = await registered(bus, "warm-0")()
        assert info is not None and info.replica == 0 and info.deployment == "warm"
        running = await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "warm-0" and r.restarts == 1)
        )
        assert running.runtime_id == str(pid)
        started = await eventually(lambda: events.of("started", "warm-0")[1:])
        assert "warm spare" in started[0].detail
        assert gauge(registry, "agentbus_supervisor_spare_claims_total", outcome="claimed") == 1

        # The pool starts a successor; the other replica is untouched.
        await eventually(lambda: len(spare_pids(tmp_path) - {pid}) == 2 or None, timeout_s=30)
        other = await registered(bus, "warm-1")()
        assert other is not None and other.pid not in waiting

        # A claimed spare that dies is replaced like any replica (by another spare).
        os.killpg(pid, signal.SIGKILL)

        async def replaced_again() -> int | None:
            info = await registered(bus, "warm-0")()
            return info.pid if info is not None and info.pid not in (first.pid, pid) else None

        assert await eventually(replaced_again, timeout_s=30) in spare_pids(tmp_path)

        # Unplaced: the replica stops; with no replica left here, so do the spares.
        await unplace(bus, "warm", 0)
        await unplace(bus, "warm", 1)
        await eventually(lambda: not spare_pids(tmp_path) or None, timeout_s=30)
        assert gauge(registry, "agentbus_supervisor_warm_spares") == 0
        await eventually(lambda: not spare_dirs(tmp_path) or None, timeout_s=10)


async def test_a_spare_that_dies_unclaimed_is_replaced(
    bus: Bus, node_id: str, tmp_path: Path
) -> None:
    dep = Deployment(name="idle", command=ECHO, capabilities=["echo"], warm_spares=1, backoff=FAST)
    await put_deployment(bus, dep)
    await place(bus, "idle", 0, node_id)
    registry = CollectorRegistry()
    async with running_supervisor(bus, process_settings(node_id, state_dir=tmp_path), registry):
        await eventually(registered(bus, "idle-0"), timeout_s=30)
        (spare,) = await eventually(lambda: spare_pids(tmp_path) or None, timeout_s=30)
        os.kill(spare, signal.SIGKILL)
        (successor,) = await eventually(
            lambda: (spare_pids(tmp_path) - {spare}) or None, timeout_s=30
        )
        assert successor != spare
        assert gauge(registry, "agentbus_supervisor_spare_exits_total") == 1
    assert not pid_alive(successor)  # a stopping supervisor stops its spares


async def test_spares_that_never_get_ready_are_replaced_by_backoff(
    bus: Bus, node_id: str, tmp_path: Path
) -> None:
    crash = [sys.executable, "-c", "import sys, time; time.sleep(0.2); sys.exit(3)"]
    dep = Deployment(name="broken", command=crash, warm_spares=1, backoff=FAST)
    await put_deployment(bus, dep)
    await place(bus, "broken", 0, node_id)
    registry = CollectorRegistry()
    async with running_supervisor(bus, process_settings(node_id, state_dir=tmp_path), registry):
        # each exit frees the start slot at once (not after READY_MAX_S) and the next
        # spare follows after the deployment's backoff (0.1 s doubling to 1 s)
        await eventually(
            lambda: gauge(registry, "agentbus_supervisor_spare_exits_total") >= 4 or None,
            timeout_s=20,
        )
        assert gauge(registry, "agentbus_supervisor_warm_spares") == 0
        claims = gauge(registry, "agentbus_supervisor_spare_claims_total", outcome="claimed")
        assert claims == 0  # the crashing replica restarts cold: no spare was ever ready


async def test_a_spare_that_never_says_it_is_ready_ends_the_specs_spares(
    bus: Bus, node_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm_pool, "READY_MAX_S", 1.0)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]  # not an agent
    dep = Deployment(name="mute", command=sleeper, warm_spares=1, backoff=FAST)
    await put_deployment(bus, dep)
    await place(bus, "mute", 0, node_id)
    registry = CollectorRegistry()
    async with running_supervisor(bus, process_settings(node_id, state_dir=tmp_path), registry):
        await eventually(lambda: spare_pids(tmp_path) or None, timeout_s=20)
        await eventually(lambda: not spare_pids(tmp_path) or None, timeout_s=20)
        await asyncio.sleep(2.0)  # backoff (0.1-1 s) passed: none started again
        assert not spare_pids(tmp_path)
        assert gauge(registry, "agentbus_supervisor_warm_spares") == 0
