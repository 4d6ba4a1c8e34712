"""The supervisor across a nats-server restart (file storage, same port): its KV watches
start over and keep converging, and agents silent during the outage are not taken
for hung ones."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.kv.mirror import KvMirror
from agentbus.messages import Backoff, Deployment, Placement, encode, utcnow
from agentbus.settings import BusSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    echo_process,
    place,
    process_settings,
    put_deployment,
    replica_where,
    running_supervisor,
    status_of,
    unplace,
)

pytestmark = pytest.mark.timeout(150)
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


class Restartable:
    """A private nats-server that can be restarted on the same port and store."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.server = NatsServer(store_dir).start()
        self.url = self.server.client_url

    def restart(self, *, down_s: float = 0.0) -> None:
        port = self.server.port
        self.server.stop()
        if down_s:
            time.sleep(down_s)  # the outage itself is what is tested (runs in a thread)
        self.server = NatsServer(self.store_dir, port=port).start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[Restartable]:
    srv = Restartable(tmp_path / "js")
    yield srv
    srv.stop()


@pytest.fixture
async def pbus(private_nats: Restartable, prefix: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(BusSettings(nats_url=private_nats.url, prefix=prefix), name="test")
    await b.ensure()
    yield b
    await b.close()


async def reconnected(bus: Bus, before: int) -> bool:
    return bus.nc.is_connected and bus.nc.stats["reconnects"] > before


async def test_mirror_watches_again_after_a_server_restart(
    pbus: Bus, private_nats: Restartable
) -> None:
    mirror = KvMirror(pbus, pbus.names.placements_bucket, Placement, check_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        kv = await pbus.kv(pbus.names.placements_bucket)
        p = Placement(deployment="d", replica=0, node_id="n", placed_at=utcnow())
        await kv.put("d.0", encode(p))
        await eventually(lambda: "d.0" in mirror.values)
        before = pbus.nc.stats["reconnects"]
        await asyncio.to_thread(private_nats.restart)
        await eventually(lambda: reconnected(pbus, before), timeout_s=30)
        await eventually(lambda: mirror.restarts >= 1 and mirror.live, timeout_s=30)
        await kv.put("d.1", encode(p))
        await kv.delete("d.0")
        await eventually(lambda: set(mirror.values) == {"d.1"}, timeout_s=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_supervisor_converges_after_a_server_restart(
    pbus: Bus, private_nats: Restartable, node_id: str
) -> None:
    await put_deployment(pbus, Deployment(name="s", command=SLEEP, backoff=Backoff(initial_s=0.1)))
    await place(pbus, "s", 0, node_id)
    settings = process_settings(node_id, watch_check_s=0.2)
    async with running_supervisor(pbus, settings):
        first = await eventually(replica_where(pbus, node_id, lambda r: r.state == "running"))
        before = pbus.nc.stats["reconnects"]
        await asyncio.to_thread(private_nats.restart)
        await eventually(lambda: reconnected(pbus, before), timeout_s=30)
        # Placements written after the restart are acted on: one added, one removed.
        await place(pbus, "s", 1, node_id)
        await unplace(pbus, "s", 0)

        async def _converged() -> bool:
            replicas = (await status_of(pbus, node_id)()).replicas
            return [(r.replica, r.state) for r in replicas] == [(1, "running")]

        await eventually(_converged, timeout_s=40)
        assert first.runtime_id not in {
            r.runtime_id for r in (await status_of(pbus, node_id)()).replicas
        }


async def test_a_nats_outage_is_not_a_hung_agent(
    pbus: Bus, private_nats: Restartable, node_id: str
) -> None:
    dep = echo_process("quiet", heartbeat_timeout_s=3.0)
    await put_deployment(pbus, dep)
    await place(pbus, "quiet", 0, node_id)
    settings = process_settings(node_id, watch_check_s=0.2)
    agents = await pbus.kv(pbus.names.agents_bucket)

    async def _registered() -> bool:
        try:
            await agents.get("quiet-0")
        except Exception:
            return False
        return True

    async with running_supervisor(pbus, settings):
        first = await eventually(replica_where(pbus, node_id, lambda r: r.state == "running"))
        await eventually(_registered, timeout_s=30)
        before = pbus.nc.stats["reconnects"]
        # Down for twice the heartbeat timeout: no heartbeat can arrive meanwhile.
        await asyncio.to_thread(private_nats.restart, down_s=6.0)
        await eventually(lambda: reconnected(pbus, before), timeout_s=30)
        await eventually(_registered, timeout_s=30)  # the agent is back on its own
        await asyncio.sleep(4.0)  # past the heartbeat timeout, with heartbeats flowing
        now = await replica_where(pbus, node_id, lambda r: r.agent_id == "quiet-0")()
        assert now is not None
        assert (now.runtime_id, now.restarts, now.state) == (first.runtime_id, 0, "running")
