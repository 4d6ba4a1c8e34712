"""The supervisor service with the process runtime: reconcile, restarts, backoff, logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from agentbus.bus import LOGS_MAX_MSGS_PER_AGENT, Bus
from agentbus.messages import (
    Backoff,
    Deployment,
    LogLine,
    NodeInfo,
    utcnow,
)
from tests._harness.polling import eventually
from tests._harness.services import pid_alive
from tests._harness.supervisor import (
    EventLog,
    place,
    process_settings,
    put_deployment,
    replica_where,
    running_supervisor,
    status_of,
    unplace,
)

pytestmark = pytest.mark.timeout(90)
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


async def test_reconcile_start_restart_and_stop(bus: Bus, events: EventLog, node_id: str) -> None:
    await put_deployment(
        bus, Deployment(name="sleeper", command=SLEEP, backoff=Backoff(initial_s=0.1))
    )
    await place(bus, "sleeper", 0, node_id)
    await place(bus, "sleeper", 1, "some-other-node")
    async with running_supervisor(bus, process_settings(node_id, labels={"zone": "a"})):
        running = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        assert running.agent_id == "sleeper-0"
        status = await status_of(bus, node_id)()
        assert [r.agent_id for r in status.replicas] == ["sleeper-0"]  # not the other node's
        assert status.node.runtime == "process"
        assert status.node.labels == {"zone": "a"}
        nodes = await bus.kv(bus.names.nodes_bucket)

        async def _node_info() -> NodeInfo:
            entry = await nodes.get(node_id)
            return msgspec.json.decode(entry.value or b"", type=NodeInfo)

        info = await eventually(_node_info)
        assert info.capacity_replicas == 64

        async def _counts_one() -> bool:
            return (await _node_info()).replicas == 1

        await eventually(_counts_one)
        pid = int(running.runtime_id)
        assert pid_alive(pid)

        os.killpg(pid, signal.SIGKILL)  # the agent crashes
        again = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running" and r.restarts == 1)
        )
        assert again.runtime_id != running.runtime_id
        restarting = await eventually(lambda: events.of("restarting", "sleeper-0"))
        assert restarting[0].restarts == 1
        assert restarting[0].exit_code == 137
        exited = events.of("exited", "sleeper-0")
        assert exited[0].exit_code == 137
        assert exited[0].reason == "exit"
        assert "SIGKILL" in exited[0].detail

        await unplace(bus, "sleeper", 0)  # placement removed: graceful stop
        await eventually(lambda: events.of("stopped", "sleeper-0"))
        assert (await status_of(bus, node_id)()).replicas == []
        assert not pid_alive(int(again.runtime_id))
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await nodes.get(node_id)  # the node left the registry


async def test_backoff_grows_on_repeated_crashes(bus: Bus, events: EventLog, node_id: str) -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(1)"]
    dep = Deployment(
        name="crasher",
        command=crash,
        backoff=Backoff(initial_s=0.2, factor=2.0, max_s=30.0),
    )
    await put_deployment(bus, dep)
    await place(bus, "crasher", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        seen: list[float] = []

        async def _probe() -> bool:
            for r in (await status_of(bus, node_id)()).replicas:
                if r.state == "backoff" and r.backoff_s and (not seen or seen[-1] != r.backoff_s):
                    seen.append(r.backoff_s)
            return len(seen) >= 4

        await eventually(_probe, timeout_s=30, every_s=0.02)
        assert seen == sorted(seen)
        assert seen[-1] > 2 * seen[0]
        assert 0.1 <= seen[0] <= 0.2  # initial backoff 0.2 s, equal jitter 0.5
        restarting = events.of("restarting", "crasher-0")
        assert [e.restarts for e in restarting[:3]] == [1, 2, 3]
        assert all(e.exit_code == 1 for e in restarting)


async def test_restart_policies_never_and_on_failure(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    ok = [sys.executable, "-c", "print('done')"]
    fail = [sys.executable, "-c", "import sys; sys.exit(2)"]
    await put_deployment(bus, Deployment(name="job", command=ok, restart_policy="on-failure"))
    await put_deployment(bus, Deployment(name="once", command=fail, restart_policy="never"))
    await place(bus, "job", 0, node_id)
    await place(bus, "once", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        exited = await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "job-0" and r.state == "exited")
        )
        assert exited.exit_code == 0
        once = await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "once-0" and r.state == "exited")
        )
        assert once.exit_code == 2
        await asyncio.sleep(1.0)  # longer than the initial backoff: no restart may follow
        assert events.of("restarting") == []
        assert len(events.of("started")) == 2


async def test_logs_are_shipped_as_log_lines(bus: Bus, node_id: str) -> None:
    code = (
        "import sys, time\n"
        "print('hello from agent', flush=True)\n"
        "print('warning here', file=sys.stderr, flush=True)\n"
        "time.sleep(600)\n"
    )
    await put_deployment(bus, Deployment(name="talker", command=[sys.executable, "-c", code]))
    got: asyncio.Queue[LogLine] = asyncio.Queue()

    async def _on(msg: Msg) -> None:
        await got.put(msgspec.json.decode(msg.data, type=LogLine))

    await bus.nc.subscribe(bus.names.log_subject("talker-0"), cb=_on)
    await place(bus, "talker", 0, node_id)
    before = utcnow()
    async with running_supervisor(bus, process_settings(node_id)):
        lines = [await asyncio.wait_for(got.get(), 20) for _ in range(2)]
        by_stream = {x.stream: x for x in lines}
        assert by_stream["stdout"].line == "hello from agent"
        assert by_stream["stderr"].line == "warning here"
        for x in lines:
            assert (x.agent_id, x.node_id) == ("talker-0", node_id)
            assert before <= x.at <= utcnow()
            assert x.runtime_id
        # Stored in the LOGS stream too, bounded per agent.
        info = await bus.js.stream_info(bus.names.logs_stream)
        assert info.config.max_msgs_per_subject == LOGS_MAX_MSGS_PER_AGENT
        stored = await bus.js.get_last_msg(bus.names.logs_stream, bus.names.log_subject("talker-0"))
        assert msgspec.json.decode(stored.data or b"", type=LogLine).agent_id == "talker-0"


async def test_bad_entries_are_reported_and_skipped(bus: Bus, node_id: str) -> None:
    errors: list[bytes] = []

    async def _on(msg: object) -> None:
        errors.append(msg.data)  # type: ignore[attr-defined]

    await bus.nc.subscribe(bus.names.events_all("error"), cb=_on)
    deployments = await bus.kv(bus.names.deployments_bucket)
    await deployments.put("broken", b"{not json")
    async with running_supervisor(bus, process_settings(node_id)):
        await put_deployment(bus, Deployment(name="fine", command=SLEEP))
        await place(bus, "fine", 0, node_id)
        await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await eventually(lambda: errors)
        assert b"deployments" in errors[0] or b"broken" in errors[0]


async def test_a_slow_stop_does_not_hold_up_other_replicas(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn = [sys.executable, "-c", f"{ignore_term}; print('up', flush=True); time.sleep(600)"]
    await put_deployment(bus, Deployment(name="stubborn", command=stubborn, stop_grace_s=8.0))
    await put_deployment(bus, Deployment(name="fresh", command=SLEEP))
    await place(bus, "stubborn", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await unplace(bus, "stubborn", 0)  # its stop takes the whole 8 s grace
        await place(bus, "fresh", 0, node_id)
        await eventually(
            replica_where(bus, node_id, lambda r: r.agent_id == "fresh-0" and r.state == "running")
        )
        assert events.of("stopped", "stubborn-0") == []  # still stopping meanwhile
        stopped = await eventually(lambda: events.of("stopped", "stubborn-0"))
        assert stopped[0].reason == "unplaced"


async def test_changed_spec_replaces_the_replica_after_its_stop(
    bus: Bus, events: EventLog, node_id: str
) -> None:
    await put_deployment(bus, Deployment(name="ver", command=SLEEP, env={"V": "1"}))
    await place(bus, "ver", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id)):
        first = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        await put_deployment(bus, Deployment(name="ver", command=SLEEP, env={"V": "2"}))
        second = await eventually(
            replica_where(
                bus, node_id, lambda r: r.state == "running" and r.runtime_id != first.runtime_id
            )
        )
        stopped = events.of("stopped", "ver-0")
        assert [e.reason for e in stopped] == ["replaced"]
        assert stopped[0].at <= events.of("started", "ver-0")[-1].at  # one name, in turn
        assert second.restarts == 0
        assert not pid_alive(int(first.runtime_id))
