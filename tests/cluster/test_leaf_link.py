"""A leaf server's link to the hub, auth on: JetStream crosses it, the link's identity bounds it.

The hub runs JetStream; the leaf runs none and authenticates its own clients. Through
the link a client of the leaf reaches the hub's JetStream API, KV buckets and Object
Store (``leafnode_jetstream_conf`` on both ends), and the link's ``leaf-<site>``
identity (``agentbus.auth.leaf``) refuses, for every client of the site, even one
holding full-access credentials, what only hub services do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from agentbus.auth.authority import init_auth, service_creds
from agentbus.auth.leaf import leaf_creds
from agentbus.bus import Bus
from agentbus.settings import BusSettings
from tests._harness.leaf import LeafServer, hub_server

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]
PREFIX = "leafy"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Bus, BusSettings, Path]]:
    """(the hub's operator bus, the leaf's URL as an operator, the auth directory)."""
    auth = init_auth(tmp_path / "auth", prefix=PREFIX)
    hub, leaf_url = hub_server(auth, tmp_path / "hub")
    creds = leaf_creds(auth, PREFIX, "edge-1")
    leaf = LeafServer("edge-1", auth, tmp_path / "leaf", hub_url=leaf_url, creds=creds)
    operator = auth.creds("operator")
    try:
        await asyncio.to_thread(leaf.start)
        bus = await Bus.connect(
            BusSettings(nats_url=hub.client_url, prefix=PREFIX, creds_file=operator)
        )
        await bus.ensure()
        edge = BusSettings(nats_url=leaf.client_url, prefix=PREFIX, creds_file=operator)
        try:
            yield bus, edge, auth.path
        finally:
            await bus.close()
    finally:
        leaf.stop()
        hub.stop()


async def test_leaf_clients_reach_the_hubs_jetstream(
    site: tuple[Bus, BusSettings, Path],
) -> None:
    hub, edge, auth_dir = site
    creds = service_creds(auth_dir, PREFIX, "supervisor", node_id="edge-1")
    supervisor = await Bus.connect(edge.model_copy(update={"creds_file": creds}))
    try:
        info = await supervisor.js.stream_info(hub.names.tasks_stream)
        assert info.config.name == hub.names.tasks_stream
        nodes = await supervisor.kv(hub.names.nodes_bucket)
        await nodes.put("edge-1", b"{}")
        seen = await (await hub.kv(hub.names.nodes_bucket)).get("edge-1")
        assert seen.value == b"{}"
    finally:
        await supervisor.close()


async def test_the_link_refuses_what_only_hub_services_do(
    site: tuple[Bus, BusSettings, Path],
) -> None:
    """A full-access user at the site (the leaf lets it publish anything) still cannot
    write a deployment, read API tokens or put a task on the stream at the hub."""
    hub, edge, _ = site
    names = hub.names
    intruder = await Bus.connect(edge.model_copy(update={"request_timeout_s": 1.0}))
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)):
            await intruder.js.publish(f"$KV.{names.deployments_bucket}.evil", b"{}", timeout=1)
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)):
            await intruder.js.stream_info(f"KV_{names.tokens_bucket}")
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)):
            await intruder.js.publish(f"{names.prefix}.tasks.echo", b"{}", timeout=1)
        # What the link carries still works for it (the refusals are the link's).
        await (await intruder.kv(names.agents_bucket)).put("someone", b"{}")
    finally:
        await intruder.close()
    deployments = await hub.kv(names.deployments_bucket)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await deployments.get("evil")
    assert (await hub.js.stream_info(names.tasks_stream)).state.messages == 0
