"""Fencing across a partition: a supervisor cut off from the bus stops its replicas
before its node entry can expire, the scheduler re-places them on a survivor, and after
the heal no replica identity ever runs twice.

n1's supervisor (and its replicas) reach the test nats-server through a ``TcpProxy``
the test cuts; n2 and the scheduler talk to it directly. Who runs which replica is read
from ``/proc`` (``Census``), so n1's side is seen while it is cut off."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.bus.contract import REGISTRY_TTL_S
from agentbus.errors import AgentBusError
from agentbus.messages import Deployment, NodeEvent
from agentbus.settings import BusSettings
from tests._harness.fleet import per_node, read_placements
from tests._harness.polling import eventually
from tests._harness.replica_census import Census, Sample, live_replicas
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    process_settings,
    put_deployment,
    running_supervisor,
    status_of,
)
from tests._harness.tcp_proxy import CutMode, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
FENCE_AFTER_S = 2.0


@pytest.fixture
async def proxy(nats_url: str) -> AsyncIterator[TcpProxy]:
    port = urlparse(nats_url).port
    assert port is not None
    p = await TcpProxy(port).start()
    yield p
    await p.close()


@pytest.fixture
async def cut_bus(proxy: TcpProxy, prefix: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(BusSettings(nats_url=proxy.url, prefix=prefix), name="n1")
    yield b
    await b.close()


def per_node_live(marker: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for procs in live_replicas(marker).values():
        for _, node in procs:
            counts[node] = counts.get(node, 0) + 1
    return counts


@pytest.mark.parametrize("mode", ["close", "stall"])
async def test_a_cut_off_node_fences_before_its_replicas_move(
    bus: Bus, cut_bus: Bus, proxy: TcpProxy, prefix: str, mode: CutMode
) -> None:
    marker = f"fence-{prefix}"
    sleep = [sys.executable, "-c", "import time; time.sleep(600)", marker]
    node_events: list[NodeEvent] = []

    async def _on(msg: Msg) -> None:
        node_events.append(msgspec.json.decode(msg.data, type=NodeEvent))

    await bus.nc.subscribe(bus.names.events_all("node"), cb=_on)
    n1_metrics = CollectorRegistry()
    n1 = process_settings("n1", fence_after_s=FENCE_AFTER_S)
    n2 = process_settings("n2")
    nodes_kv = await bus.kv(bus.names.nodes_bucket)
    async with (
        running_scheduler(bus),
        running_supervisor(cut_bus, n1, n1_metrics, probe=bus),
        running_supervisor(bus, n2),
        Census(marker) as census,
    ):
        await eventually(lambda: _has_keys(nodes_kv, {"n1", "n2"}), what="both nodes listed")
        await put_deployment(bus, Deployment(name="f", replicas=4, command=sleep))
        await eventually(
            lambda: per_node_live(marker) == {"n1": 2, "n2": 2}, timeout_s=30, what="2 + 2 live"
        )

        cut_at = time.monotonic()
        await proxy.cut(mode)
        bucket = bus.names.nodes_bucket  # the last heartbeat that reached the server:
        last_beat = (await bus.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.n1")).time
        assert last_beat is not None
        expiry = last_beat.timestamp() + REGISTRY_TTL_S - time.time() + time.monotonic()

        def n1_gone() -> Sample | None:
            return next((s for s in census.since(cut_at) if not s.on("n1")), None)

        gone = await eventually(n1_gone, timeout_s=REGISTRY_TTL_S, what="n1's replicas gone")
        assert gone.at < expiry, "n1's replicas outlived its node entry"

        async def moved() -> bool:
            return per_node(await read_placements(bus)) == {"n2": 4}

        await eventually(moved, timeout_s=30, what="placements moved to n2")
        await eventually(lambda: per_node_live(marker) == {"n2": 4}, timeout_s=30, what="4 on n2")
        assert [s.on("n1") for s in census.since(gone.at) if s.on("n1")] == []

        restored_at = time.monotonic()
        proxy.restore()

        async def unfenced() -> bool:
            try:  # no responder until n1 has reconnected
                return not (await status_of(bus, "n1")()).node.fenced
            except AgentBusError:
                return False

        await eventually(unfenced, timeout_s=30, what="n1 unfenced")
        assert n1_metrics.get_sample_value("agentbus_supervisor_fences_total") == 1.0
        # n1 reconciles normally again: new replicas go to it (it holds none of "f").
        await put_deployment(bus, Deployment(name="f", replicas=6, command=sleep))
        await eventually(
            lambda: per_node_live(marker) == {"n1": 2, "n2": 4}, timeout_s=30, what="2 on n1"
        )
        await eventually(
            lambda: {e.kind for e in node_events if e.node_id == "n1"} >= {"fenced", "unfenced"},
            what="fenced and unfenced events",
        )
        # The moved replicas stayed on n2: n1 never started one of them after the heal.
        for sample in census.since(restored_at):
            on_n1 = {a for a, procs in sample.replicas.items() for _, n in procs if n == "n1"}
            assert on_n1 <= {"f-4", "f-5"}
    assert census.duplicates() == []


async def _has_keys(kv: KeyValue, keys: set[str]) -> bool:
    try:
        return keys <= set(await kv.keys())
    except nats.js.errors.NoKeysError:
        return False
