"""Restart causes with the process runtime: failed health check, missed heartbeats of a
hung agent, crash-loop marking, backoff reset after healthy uptime."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.messages import Backoff, Deployment
from agentbus.messages.fleet import CrashLoop, HealthCheck
from tests._harness.polling import eventually
from tests._harness.services import pid_alive
from tests._harness.supervisor import (
    EventLog,
    echo_process,
    place,
    process_settings,
    put_deployment,
    registered,
    replica_where,
    running_supervisor,
    status_of,
)

pytestmark = pytest.mark.timeout(120)
FAST = Backoff(initial_s=0.05, factor=2.0, max_s=0.5, jitter=0.0)


async def test_failed_health_check_restarts_the_replica(
    bus: Bus, events: EventLog, node_id: str, tmp_path: Path
) -> None:
    marker = tmp_path / "healthy"
    code = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(600)"
    check = f"import os, sys; sys.exit(0 if os.path.exists({str(marker)!r}) else 3)"
    probe = [sys.executable, "-c", check]
    dep = Deployment(
        name="probed",
        command=[sys.executable, "-c", code],
        backoff=FAST,
        health=HealthCheck(command=probe, interval_s=0.2, timeout_s=5.0, retries=2),
    )
    await put_deployment(bus, dep)
    await place(bus, "probed", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await eventually(lambda: marker.exists())
        await asyncio.sleep(1.0)  # five probe intervals: passing probes keep it running
        assert events.of("restarting") == []
        marker.unlink()  # the replica turns unhealthy; its process is still alive
        restarting = await eventually(lambda: events.of("restarting", "probed-0"))
        assert restarting[0].reason == "unhealthy"
        assert restarting[0].exit_code == 137  # killed by the supervisor
        assert "health check failed 2 times" in restarting[0].detail
        assert "exit 3" in restarting[0].detail
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )
        assert again.runtime_id != first.runtime_id


async def test_hung_agent_is_restarted_for_missed_heartbeats(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    dep = echo_process("hangs", backoff=FAST, heartbeat_timeout_s=4.0)
    await put_deployment(bus, dep)
    await place(bus, "hangs", 0, node_id)
    agent = registered(bus, "hangs-0")

    async def _registered_pid() -> int | None:
        info = await agent()
        return info.pid if info else None

    async with running_supervisor(bus, process_settings(node_id)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        pid = int(first.runtime_id)
        assert await eventually(_registered_pid, timeout_s=30) == pid
        os.killpg(pid, signal.SIGSTOP)  # hung: alive, but silent
        try:
            restarting = await eventually(lambda: events.of("restarting", "hangs-0"), timeout_s=40)
        finally:
            if pid_alive(pid):
                os.killpg(pid, signal.SIGCONT)
        assert restarting[0].reason == "heartbeat"
        assert "no agent heartbeat for 4 s" in restarting[0].detail
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )

        async def _new_pid_registered() -> bool:
            return await _registered_pid() == int(again.runtime_id)

        await eventually(_new_pid_registered, timeout_s=30)
        assert not pid_alive(pid)


async def test_crash_loop_is_marked_and_retried_at_the_cap(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    dep = Deployment(
        name="loops",
        command=[sys.executable, "-c", "import sys; sys.exit(5)"],
        backoff=Backoff(initial_s=0.05, factor=2.0, max_s=0.6, jitter=0.0),
        crash_loop=CrashLoop(max_restarts=3, window_s=60.0),
    )
    await put_deployment(bus, dep)
    await place(bus, "loops", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        looping = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "crash-loop"), every_s=0.02
        )
        assert looping.backoff_s == 0.6  # the cap
        marked = events.of("crash-loop", "loops-0")
        assert len(marked) == 1
        assert (marked[0].reason, marked[0].exit_code, marked[0].restarts) == ("exit", 5, 4)
        # Retries go on, at the cap, and the mark is announced once.
        await eventually(replica_where(bus, node_id, lambda r: r.restarts >= 6), timeout_s=30)
        assert len(events.of("crash-loop", "loops-0")) == 1
        delays = [e.detail.rsplit("restart in ", 1)[1] for e in events.of("restarting")]
        assert delays[:4] == ["0.05 s", "0.10 s", "0.20 s", "0.60 s"]
        assert set(delays[3:]) == {"0.60 s"}


async def test_backoff_resets_after_healthy_uptime(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    # Runs 1.5 s, then fails: longer than backoff_reset_s, so every restart is the first.
    code = "import sys, time; time.sleep(1.5); sys.exit(1)"
    dep = Deployment(
        name="steady",
        command=[sys.executable, "-c", code],
        backoff=Backoff(initial_s=0.1, factor=4.0, max_s=30.0, jitter=0.0),
        backoff_reset_s=1.0,
    )
    await put_deployment(bus, dep)
    await place(bus, "steady", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        await eventually(lambda: len(events.of("restarting", "steady-0")) >= 3, timeout_s=40)
        details = [e.detail for e in events.of("restarting", "steady-0")]
        assert all(d.endswith("restart in 0.10 s") for d in details), details
        status = await status_of(bus, node_id)()
        assert status.replicas[0].restarts >= 3
