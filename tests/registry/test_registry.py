from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from agentbus.bus import Bus
from agentbus.messages import AgentEvent, DuplicateEvent, ErrorEvent, NodeEvent, encode, utcnow
from agentbus_registry.settings import RegistrySettings
from tests._harness.polling import eventually
from tests._harness.registry import (
    Registry,
    agent_info,
    heartbeat,
    next_event,
    node_info,
    start_registry,
)


async def joined(bus: Bus, registry_service: Registry, agent_id: str) -> None:
    """One heartbeat of ``agent_id``, then wait until the registry lists it (alone)."""
    await heartbeat(bus, agent_info(agent_id, ["echo"]))

    async def listed() -> bool:
        return [a.agent_id for a in await registry_service.client.agents()] == [agent_id]

    await eventually(listed, what=f"{agent_id} listed")


async def test_agents_found_by_capability(bus: Bus, registry_service: Registry) -> None:
    client = registry_service.client
    await heartbeat(bus, agent_info("b-agent", ["echo"]))
    await heartbeat(bus, agent_info("a-agent", ["echo", "review"], status="busy"))

    async def both_listed() -> bool:
        return len(await client.agents()) == 2

    await eventually(both_listed, what="two agents listed")
    assert [a.agent_id for a in await client.agents()] == ["a-agent", "b-agent"]
    assert [a.agent_id for a in await client.agents(capability="echo")] == [
        "a-agent",
        "b-agent",
    ]
    review = await client.agents(capability="review")
    assert [a.agent_id for a in review] == ["a-agent"]
    assert review[0].status == "busy"
    assert review[0].name == "name-a-agent"
    assert await client.agents(capability="nope") == []

    joined = await next_event(bus, "agent", "joined", AgentEvent, timeout_s=5)
    assert isinstance(joined, AgentEvent)
    assert joined.kind == "joined"
    assert joined.agent_id in {"a-agent", "b-agent"}
    assert registry_service.metric("agentbus_registry_joins_total", {"entity": "agent"}) == 2

    def gauges_set() -> bool:
        m = registry_service.metric
        return (
            m("agentbus_registry_agents", {"status": "busy"}) == 1
            and m("agentbus_registry_agents", {"status": "ready"}) == 1
        )

    await eventually(gauges_set, what="agent gauges by status")


async def test_heartbeats_refresh_without_new_join(bus: Bus, registry_service: Registry) -> None:
    info = agent_info("a1", ["echo"])
    for _ in range(3):
        await heartbeat(bus, info)

    async def listed() -> bool:
        return [a.agent_id for a in await registry_service.client.agents()] == ["a1"]

    await eventually(listed, what="a1 listed")
    await asyncio.sleep(0.2)
    assert registry_service.metric("agentbus_registry_joins_total", {"entity": "agent"}) == 1


@pytest.mark.timeout(60)
async def test_silent_agent_is_lost(bus: Bus, registry_service: Registry) -> None:
    await joined(bus, registry_service, "quiet")
    # No more heartbeats: the 10 s bucket TTL expires the key and the marker says so.
    lost = await next_event(bus, "agent", "lost", AgentEvent, timeout_s=40)
    assert isinstance(lost, AgentEvent)
    assert (lost.agent_id, lost.kind, lost.node_id) == ("quiet", "lost", "node-a")
    assert await registry_service.client.agents() == []
    assert (
        registry_service.metric(
            "agentbus_registry_departures_total", {"entity": "agent", "kind": "lost"}
        )
        == 1
    )


async def test_deleted_agent_has_left(bus: Bus, registry_service: Registry) -> None:
    await joined(bus, registry_service, "leaver")
    kv = await bus.kv(bus.names.agents_bucket)
    await kv.delete("leaver")
    left = await next_event(bus, "agent", "left", AgentEvent, timeout_s=5)
    assert isinstance(left, AgentEvent)
    assert (left.agent_id, left.kind) == ("leaver", "left")
    assert await registry_service.client.agents() == []


async def test_stale_heartbeat_is_not_listed(bus: Bus) -> None:
    stop = asyncio.Event()
    reg = await start_registry(bus, RegistrySettings(stale_after_s=2.0), stop)
    try:
        kv = await bus.kv(bus.names.agents_bucket)
        old = agent_info("old", ["echo"], heartbeat_at=utcnow() - timedelta(seconds=60))
        fresh = agent_info("fresh", ["echo"])
        # Written "now" by KV, but the agent claims an old heartbeat; it stays hidden
        # only once the KV write itself is older than stale_after_s as well.
        await kv.put("old", encode(old))
        await kv.put("fresh", encode(fresh))

        async def both_listed() -> bool:
            return len(await reg.client.agents()) == 2

        await eventually(both_listed, what="both agents listed")

        async def only_fresh() -> bool:
            return [a.agent_id for a in await reg.client.agents()] == ["fresh"]

        async def beat_fresh() -> None:
            while True:
                await heartbeat(bus, fresh)
                await asyncio.sleep(0.3)

        beating = asyncio.create_task(beat_fresh())
        try:
            # "old" is hidden after 2 s, long before its TTL (10 s) expires the key.
            await eventually(only_fresh, timeout_s=6, what="stale agent hidden")
            assert (await kv.get("old")).value is not None
        finally:
            beating.cancel()
    finally:
        stop.set()
        await asyncio.wait_for(reg.task, 10)


async def test_garbage_entry_is_reported_and_skipped(bus: Bus, registry_service: Registry) -> None:
    kv = await bus.kv(bus.names.agents_bucket)
    await kv.put("junk", b"\x00 not json")
    await kv.put("liar", encode(agent_info("someone-else", ["echo"])))
    await heartbeat(bus, agent_info("good", ["echo"]))

    async def good_listed() -> bool:
        return [a.agent_id for a in await registry_service.client.agents()] == ["good"]

    await eventually(good_listed, what="valid agent listed")
    assert (
        registry_service.metric(
            "agentbus_bad_messages_total", {"service": "registry", "source": "agents_kv"}
        )
        == 2
    )
    error = await next_event(bus, "error", "registry", ErrorEvent, timeout_s=5)
    assert isinstance(error, ErrorEvent)
    assert error.subject == f"$KV.{bus.names.agents_bucket}.junk"
    # still serving and still watching
    await heartbeat(bus, agent_info("later", ["echo"]))

    async def later_listed() -> bool:
        return len(await registry_service.client.agents()) == 2

    await eventually(later_listed, what="agent after garbage listed")


async def test_entry_overwritten_with_garbage_is_lost(bus: Bus, registry_service: Registry) -> None:
    await joined(bus, registry_service, "spoilt")
    kv = await bus.kv(bus.names.agents_bucket)
    await kv.put("spoilt", encode(agent_info("not-spoilt", ["echo"])))  # id differs from key
    lost = await next_event(bus, "agent", "lost", AgentEvent, timeout_s=5)
    assert isinstance(lost, AgentEvent)
    assert (lost.agent_id, lost.kind) == ("spoilt", "lost")
    assert await registry_service.client.agents() == []
    labels = {"service": "registry", "source": "agents_kv"}
    assert registry_service.metric("agentbus_bad_messages_total", labels) == 1
    departures = {"entity": "agent", "kind": "lost"}
    assert registry_service.metric("agentbus_registry_departures_total", departures) == 1


async def test_nodes_endpoint_and_events(bus: Bus, registry_service: Registry) -> None:
    kv = await bus.kv(bus.names.nodes_bucket)
    await kv.put("node-b", encode(node_info("node-b")))
    await kv.put("node-a", encode(node_info("node-a")))

    async def both_listed() -> bool:
        return len(await registry_service.client.nodes()) == 2

    await eventually(both_listed, what="two nodes listed")
    nodes = await registry_service.client.nodes()
    assert [n.node_id for n in nodes] == ["node-a", "node-b"]
    assert nodes[0].runtime == "process"

    def gauge_set() -> bool:
        return registry_service.metric("agentbus_registry_nodes") == 2

    await eventually(gauge_set, what="nodes gauge")
    joined = await next_event(bus, "node", "joined", NodeEvent, timeout_s=5)
    assert isinstance(joined, NodeEvent)
    assert joined.node_id in {"node-a", "node-b"}

    await kv.delete("node-a")
    left = await next_event(bus, "node", "left", NodeEvent, timeout_s=5)
    assert isinstance(left, NodeEvent)
    assert (left.node_id, left.kind) == ("node-a", "left")
    assert [n.node_id for n in await registry_service.client.nodes()] == ["node-b"]


async def test_restarted_registry_sees_existing_entries_without_rejoining(bus: Bus) -> None:
    info = agent_info("steady", ["echo"])
    await heartbeat(bus, info)
    for _ in range(2):
        stop = asyncio.Event()
        reg = await start_registry(bus, RegistrySettings(), stop)
        try:
            assert [a.agent_id for a in await reg.client.agents()] == ["steady"]
        finally:
            stop.set()
            await asyncio.wait_for(reg.task, 10)
    # Both runs announced the same incarnation with the same Nats-Msg-Id: one event.
    info_stream = await bus.js.stream_info(
        bus.names.events_stream, subjects_filter=bus.names.event_subject("agent", "joined")
    )
    assert info_stream.state.messages == 1


async def test_ping_answers(bus: Bus, registry_service: Registry) -> None:
    reply = await bus.nc.request("$SRV.PING.registry", b"", timeout=2)
    assert msgspec.json.decode(reply.data)["name"] == "registry"


async def _events_of(bus: Bus, entity: str, kind: str) -> list[bytes]:
    """Every event on ``<p>.events.<entity>.<kind>`` so far (from the stream)."""
    info = await bus.js.stream_info(
        bus.names.events_stream, subjects_filter=bus.names.event_subject(entity, kind)
    )
    subjects = info.state.subjects or {}
    count = sum(subjects.values())
    if not count:
        return []
    sub = await bus.js.subscribe(
        bus.names.event_subject(entity, kind),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        return [(await sub.next_msg(timeout=5)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_two_instances_of_one_agent_id_are_one_duplicate_event(
    bus: Bus, registry_service: Registry
) -> None:
    """Two processes heartbeat as ``dup-0`` (a replica run twice): one ``duplicate`` error
    event naming both, counted once, and no join per flip between them."""
    base = agent_info("dup-0", ["echo"])
    first = msgspec.structs.replace(base, pid=101, hostname="host-a")
    second = msgspec.structs.replace(
        base, pid=202, hostname="host-b", started_at=base.started_at + timedelta(seconds=0.5)
    )
    for _ in range(15):  # interleaved heartbeats, as two live agents produce them
        await heartbeat(bus, first)
        await heartbeat(bus, second)
        await asyncio.sleep(0.02)

    def reported() -> bool:
        return (
            registry_service.metric("agentbus_registry_duplicates_total", {"entity": "agent"}) > 0
        )

    await eventually(reported, what="duplicate counted")
    await heartbeat(bus, first)  # the registry has applied everything before this
    await asyncio.sleep(0.3)
    dups = [
        msgspec.json.decode(d, type=DuplicateEvent)
        for d in await _events_of(bus, "agent", "duplicate")
    ]
    assert len(dups) == 1
    assert dups[0].id == "dup-0"
    assert len(dups[0].instances) == 2
    assert any("host-a pid 101" in i for i in dups[0].instances)
    assert any("host-b pid 202" in i for i in dups[0].instances)
    assert registry_service.metric("agentbus_registry_duplicates_total", {"entity": "agent"}) == 1
    assert len(await _events_of(bus, "agent", "joined")) <= 2
    assert registry_service.metric("agentbus_registry_joins_total", {"entity": "agent"}) <= 2
