"""The embedded stack on a loopback cluster: restarting one server of it."""

from __future__ import annotations

import os
import signal

import nats.errors
import pytest

from agentbus.bus import Bus
from agentbus.embedded import EmbeddedStack
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_killed_server_restarts_with_its_name_and_store_and_rejoins() -> None:
    async with EmbeddedStack(cluster=3, prefix="e2erestart", log_level="WARNING") as stack:
        with pytest.raises(KeyError):
            await stack.restart_server("nats-9")
        with pytest.raises(ValueError, match="still running"):
            await stack.restart_server("nats-1")
        old_pid = stack.pids["nats-1"]
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: "nats-1" in stack.failed(), what="nats-1 exited")

        await stack.restart_server("nats-1")

        assert stack.pids["nats-1"] != old_pid
        assert stack.failed() == {}
        log = (stack.log_dir / "nats-1.log").read_text()
        assert log.count("Server is ready") == 2  # one log, both lives
        bus = await Bus.connect(stack.settings)
        try:

            async def all_replicas_current() -> bool:
                try:
                    info = await bus.js.stream_info(bus.names.tasks_stream)
                except nats.errors.TimeoutError:  # the stream is electing a leader
                    return False
                assert info.cluster is not None
                peers = {info.cluster.leader: True} | {
                    r.name: bool(r.current and not r.offline) for r in info.cluster.replicas or []
                }
                return peers == {"nats-0": True, "nats-1": True, "nats-2": True}

            # nats-1 is a peer of the R3 stream again, under its name, caught up
            await eventually(all_replicas_current, timeout_s=30, what="R3 replicas current")
        finally:
            await bus.close()
