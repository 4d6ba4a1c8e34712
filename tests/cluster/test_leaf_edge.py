"""An edge site behind a leaf node: it runs tasks from the hub, and a cut link only delays them.

The hub (one nats-server with JetStream and a leaf-node listener, the scheduler and the
registry) is in the test's own network namespace; the edge is a host of its own
(``tests._harness.netns``): a leaf server joined to the hub as ``leaf-edge-1``, a
supervisor with node id ``edge-1`` and label ``site=edge``, and the echo agents it
starts, all connected to the local leaf. Auth is on everywhere.

A deployment whose node selector is ``site=edge`` is placed on the edge, and tasks
submitted at the hub complete there. Then the edge's link goes down for
``CUT_S`` (longer than the node TTL and the supervisor's fencing: its replica may be
stopped and started again after the heal) while more tasks are submitted: none
completes while the link is down, and after the heal every task completes, each
reaching its terminal record exactly once with its own input as output.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from agentbus.auth.authority import AuthDir, init_auth, service_creds
from agentbus.auth.leaf import leaf_creds
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded.stack import ping_services
from agentbus.messages import TERMINAL_STATUSES, Deployment, decode_record
from agentbus.settings import BusSettings
from tests._harness.leaf import LeafServer, hub_server
from tests._harness.netns import Host, Network, netns_available
from tests._harness.polling import eventually
from tests._harness.services import end_processes, spawn_service

pytestmark = [
    pytest.mark.slow,
    pytest.mark.nats,
    pytest.mark.timeout(150),
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]
PREFIX = "edge"
NODE = "edge-1"
CUT_S = 15.0
"""Longer than the node TTL (10 s): the hub forgets the node, the node fences."""
TASKS_BEFORE = 10
TASKS_DURING = 20
MAX_ATTEMPTS = 5
"""Pull deliveries in flight when the link drops are lost and count as attempts."""


@pytest.fixture
def network() -> Iterator[Network]:
    with Network() as net:
        yield net


def _spawn_supervisor(host: Host, auth: AuthDir, leaf_url: str, work: Path) -> None:
    creds = service_creds(auth, PREFIX, "supervisor", node_id=NODE)
    env = {
        **os.environ,
        "AGENTBUS_NATS_URL": leaf_url,
        "AGENTBUS_PREFIX": PREFIX,
        "AGENTBUS_CREDS_FILE": str(creds),
        "SUPERVISOR_NODE_ID": NODE,
        "SUPERVISOR_RUNTIME": "process",
        "SUPERVISOR_LABELS": json.dumps({"site": "edge"}),
        "SUPERVISOR_AUTH_DIR": str(auth.path),
        "SUPERVISOR_STATE_DIR": str(work / "state"),
        "SUPERVISOR_HEARTBEAT_S": "1",
        "SUPERVISOR_STOP_GRACE_S": "2",
    }
    argv = [sys.executable, "-m", "agentbus_supervisor"]
    host.spawn("supervisor", argv, env=env, log=work / "supervisor.log")


async def test_edge_site_completes_tasks_and_survives_a_cut_link(
    network: Network, tmp_path: Path
) -> None:
    auth = init_auth(tmp_path / "auth", prefix=PREFIX)
    hub, hub_leaf_url = hub_server(auth, tmp_path / "hub", leaf_host=network.gateway)
    edge = network.add_host(NODE)
    leaf = LeafServer(
        "leaf-edge-1",
        auth,
        tmp_path / "edge",
        hub_url=hub_leaf_url,
        creds=leaf_creds(auth, PREFIX, NODE),
        host=edge,
    )
    services = []
    operator = BusSettings(
        nats_url=hub.client_url, prefix=PREFIX, creds_file=auth.creds("operator")
    )
    client = Client(await Bus.connect(operator))
    try:
        await client.bus.ensure()
        for service in ("registry", "scheduler"):
            env = {
                "AGENTBUS_CREDS_FILE": str(auth.creds(service)),
                "SCHEDULER_PLACE_INTERVAL_S": "0.5",
            }
            log = tmp_path / f"{service}.log"
            services.append(spawn_service(service, hub.client_url, PREFIX, log, env))
        await asyncio.to_thread(leaf.start)

        async def hub_services_up() -> bool:
            return {"registry", "scheduler"} <= await ping_services(client.bus.nc, prefix=PREFIX)

        await eventually(hub_services_up, timeout_s=30, what="scheduler and registry answering")
        _spawn_supervisor(edge, auth, leaf.client_url, tmp_path / "edge")
        await _run(client, leaf, network, tmp_path)
    finally:
        await client.close()
        network.close()
        end_processes(services, grace_s=5)
        hub.stop()


async def _run(client: Client, leaf: LeafServer, network: Network, tmp: Path) -> None:
    terminal: Counter[str] = Counter()
    inputs: dict[str, dict[str, object]] = {}

    async def on_record(msg: Msg) -> None:
        record = decode_record(msg.data)
        if record.status in TERMINAL_STATUSES:
            terminal[record.task_id] += 1

    await client.bus.nc.subscribe(client.names.task_records_all(), cb=on_record)
    deployment = Deployment(
        name="edge-echo",
        command=[sys.executable, "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        node_selector={"site": "edge"},
        env={"AGENTBUS_AGENT_HEARTBEAT_S": "1", "AGENTBUS_AGENT_LEASE_S": "4"},
    )
    await client.deploy(deployment)

    async def submit(n: int, tag: str) -> list[str]:
        values = [{"n": i, "tag": tag} for i in range(n)]
        records = await asyncio.gather(
            *(client.submit("echo", v, max_attempts=MAX_ATTEMPTS) for v in values)
        )
        inputs.update({r.task_id: v for r, v in zip(records, values, strict=True)})
        return [r.task_id for r in records]

    async def all_done(ids: list[str], timeout_s: float, what: str) -> None:
        try:
            await eventually(lambda: all(terminal[i] for i in ids), timeout_s=timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in (tmp / "edge" / "supervisor.log", leaf.log, tmp / "scheduler.log")
            if p.exists()
        )

    before = await submit(TASKS_BEFORE, "before")
    await all_done(before, 40, "tasks done at the edge")

    links = leaf.links_up()
    network.partition(NODE)
    cut_at = time.monotonic()
    during = await submit(TASKS_DURING, "during")
    await asyncio.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
    assert not any(terminal[i] for i in during), "a task completed with the edge cut off"
    network.heal(NODE)

    await all_done(during, 60, "tasks done after the heal")
    everything = before + during
    for task_id in everything:
        record = await client.get(task_id)
        assert record.status == "succeeded", (task_id, record.status, record.error)
        assert await client.output(record) == inputs[task_id]
    assert {i: terminal[i] for i in everything if terminal[i] != 1} == {}
    assert leaf.links_up() >= links  # the link came back (or never dropped at TCP level)
