"""Checkpoint put/get, conflicts, large values and integrity, against a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.bus.blobs import put_blob
from agentbus.bus.objects import delete_object, put_object
from agentbus.errors import (
    CheckpointConflictError,
    CheckpointCorruptedError,
    ConflictError,
    ContractError,
    NotFoundError,
)
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointReply,
    GetCheckpoint,
    PutCheckpoint,
    encode,
)
from agentbus.state.checkpoints import CheckpointClient
from agentbus_checkpoint.keys import ThreadKeys, escape_token, unescape_token
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.settings import CheckpointSettings
from agentbus_checkpoint.store import CheckpointStore
from tests._harness.checkpoint import Service


def test_key_escaping_is_reversible_and_kv_safe() -> None:
    for value in ["echo-0", "a.b", "x=y", "spaces and/slash", "ünï", "=41", "*>"]:
        token = escape_token(value)
        assert unescape_token(token) == value
        assert all(c.isascii() and (c.isalnum() or c in "_-=") for c in token)
    assert escape_token("echo-0") == "echo-0"
    tk = ThreadKeys.of("a.b", "t 1", "child:1")
    assert tk.prefix == "a=2Eb.t=201.ns.child=3A1"
    assert tk.record(3) == "a=2Eb.t=201.ns.child=3A1.v.000000000003.rec"


async def test_put_then_get_latest_and_by_id(client: CheckpointClient) -> None:
    first = await client.put("thread.one", b"state-1", parent_id=None, metadata={"step": "1"})
    assert (first.version, first.parent_id, first.data) == (1, None, b"")
    assert first.sha256 == hashlib.sha256(b"state-1").hexdigest()
    second = await client.put("thread.one", b"state-2", parent_id=first.checkpoint_id)
    assert second.version == 2

    latest = await client.get("thread.one")
    assert (latest.checkpoint_id, latest.data, latest.parent_id) == (
        second.checkpoint_id,
        b"state-2",
        first.checkpoint_id,
    )
    old = await client.get("thread.one", first.checkpoint_id)
    assert (old.data, old.version, old.metadata) == (b"state-1", 1, {"step": "1"})

    # threads, namespaces and agents are separate
    assert await client.latest("thread-two") is None
    assert await client.latest("thread.one", namespace="child") is None
    other_agent = CheckpointClient(client.bus, "agent-2")
    with pytest.raises(NotFoundError):
        await other_agent.get("thread.one")
    with pytest.raises(NotFoundError):
        await client.get("thread.one", "000000000009-deadbeef")
    in_ns = await client.put("thread.one", b"sub", parent_id=None, namespace="child")
    assert in_ns.version == 1
    assert (await client.get("thread.one", namespace="child")).data == b"sub"
    assert (await client.get("thread.one")).data == b"state-2"


async def test_keys_are_readable_in_kv(bus: Bus, client: CheckpointClient) -> None:
    ckpt = await client.put("job-7", b'{"n": 1}', parent_id=None)
    kv = await bus.kv(bus.names.checkpoints_bucket)
    keys = set(await kv.keys())
    assert {
        "agent-1.job-7.latest",
        "agent-1.job-7.v.000000000001.rec",
        f"agent-1.job-7.id.{escape_token(ckpt.checkpoint_id)}",
    } == keys
    # one message is the version: the record with its data inline
    record = msgspec.json.decode((await kv.get("agent-1.job-7.v.000000000001.rec")).value or b"")
    assert base64.b64decode(record["data"]) == b'{"n": 1}'
    assert record["checkpoint_id"] == ckpt.checkpoint_id
    head = msgspec.json.decode((await kv.get("agent-1.job-7.latest")).value or b"")
    assert head["checkpoint_id"] == ckpt.checkpoint_id


async def test_versions_stored_with_data_under_its_own_key_are_read(
    bus: Bus, svc: Service, client: CheckpointClient
) -> None:
    # The layout before the data moved into the record: record without data, data at
    # <prefix>.v.<n>.data. Such versions stay readable (and checked).
    kv = await bus.kv(bus.names.checkpoints_bucket)
    tk = ThreadKeys.of("agent-1", "old")
    stored = await client.put("old", b"state", parent_id=None)
    raw = msgspec.json.decode((await kv.get(tk.record(1))).value or b"")
    raw["data"] = ""
    await kv.put(tk.record(1), msgspec.json.encode(raw))
    with pytest.raises(CheckpointCorruptedError, match="missing"):
        await client.get("old")
    await kv.put(tk.data(1), b"state")
    got = await client.get("old")
    assert (got.checkpoint_id, got.data) == (stored.checkpoint_id, b"state")
    await kv.put(tk.data(1), b"evil state")
    with pytest.raises(CheckpointCorruptedError, match="SHA-256"):
        await client.get("old")


async def test_stale_parent_is_a_typed_conflict_naming_both_versions(
    svc: Service, client: CheckpointClient
) -> None:
    first = await client.put("t", b"1", parent_id=None)
    second = await client.put("t", b"2", parent_id=first.checkpoint_id)
    with pytest.raises(CheckpointConflictError) as info:
        await client.put("t", b"3", parent_id=first.checkpoint_id)
    assert (info.value.expected_id, info.value.latest_id) == (
        first.checkpoint_id,
        second.checkpoint_id,
    )
    assert isinstance(info.value, ConflictError)
    with pytest.raises(CheckpointConflictError) as info:  # no parent on a non-empty thread
        await client.put("t", b"3", parent_id=None)
    assert (info.value.expected_id, info.value.latest_id) == (None, second.checkpoint_id)
    with pytest.raises(CheckpointConflictError) as info:  # a parent on an empty thread
        await client.put("empty", b"1", parent_id=first.checkpoint_id)
    assert info.value.latest_id is None
    assert (await client.get("t")).checkpoint_id == second.checkpoint_id
    assert svc.metric("agentbus_checkpoint_conflicts_total") == 3


async def test_concurrent_puts_on_one_parent_exactly_one_wins(bus: Bus) -> None:
    # Several stores stand for several service instances racing on one head.
    stores = [
        CheckpointStore(bus, CheckpointSettings(), CheckpointMetrics(CollectorRegistry()))
        for _ in range(6)
    ]
    base, _ = await stores[0].put(PutCheckpoint(agent_id="a", thread_id="race", data=b"0"))
    results = await asyncio.gather(
        *(
            s.put(
                PutCheckpoint(
                    agent_id="a", thread_id="race", data=bytes([i]), parent_id=base.checkpoint_id
                )
            )
            for i, s in enumerate(stores)
        ),
        return_exceptions=True,
    )
    winners = [r[0] for r in results if isinstance(r, tuple)]
    losers = [r for r in results if isinstance(r, CheckpointConflictError)]
    assert len(winners) == 1
    assert len(losers) == 5
    assert all(e.latest_id == winners[0].checkpoint_id for e in losers)
    # nothing of the losers was stored: the put is one atomic batch
    kv = await bus.kv(bus.names.checkpoints_bucket)
    assert sorted(k for k in await kv.keys() if k.endswith(".rec")) == [
        "a.race.v.000000000001.rec",
        "a.race.v.000000000002.rec",
    ]
    got = await stores[0].get(GetCheckpoint(agent_id="a", thread_id="race"))
    assert (got.checkpoint_id, got.version) == (winners[0].checkpoint_id, 2)


async def test_client_chosen_ids_branching_and_duplicates(client: CheckpointClient) -> None:
    a = await client.put("t", b"a", parent_id=None, checkpoint_id="1f0-aaa")
    b = await client.put("t", b"b", parent_id="1f0-aaa", checkpoint_id="1f0-bbb")
    assert (a.checkpoint_id, b.checkpoint_id) == ("1f0-aaa", "1f0-bbb")
    assert (await client.get("t", "1f0-aaa")).data == b"a"
    with pytest.raises(ConflictError, match="already exists"):
        await client.put("t", b"x", parent_id="1f0-bbb", checkpoint_id="1f0-aaa")
    # time travel: branch from the first version; the branch becomes the latest
    c = await client.put("t", b"c", parent_id="1f0-aaa", checkpoint_id="1f0-ccc", branch=True)
    assert (c.parent_id, c.version) == ("1f0-aaa", 3)
    assert (await client.get("t")).checkpoint_id == "1f0-ccc"
    with pytest.raises(NotFoundError):
        await client.put("t", b"d", parent_id="nope", branch=True)
    with pytest.raises(ContractError):
        await client.put("t", b"d", parent_id="1f0-ccc", checkpoint_id="has space")


async def test_values_of_any_size_round_trip(bus: Bus, svc: Service) -> None:
    client = svc.client()
    parent = None
    for size in (0, 1, 300 * 1024, 900 * 1024, 4 * 1024 * 1024):
        data = os.urandom(size)
        stored = await client.put("big", data, parent_id=parent)
        parent = stored.checkpoint_id
        assert stored.size_bytes == size
        assert (stored.data_ref is not None) == (size > 256 * 1024)
        got = await client.get("big")
        assert got.data == data, size
        assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert svc.metric("agentbus_checkpoint_puts_total", {"storage": "blob"}) == 3
    obs = await bus.object_store(bus.names.checkpoint_blobs_bucket)
    assert (await obs.status()).ttl in (None, 0)  # checkpoint data never expires by age
    names = [o.name for o in await obs.list(ignore_deletes=True) if not o.deleted]
    assert len(names) == 3
    assert all(n.startswith("agent-1.big/") for n in names)


async def test_data_ref_must_be_the_threads_and_match(bus: Bus, client: CheckpointClient) -> None:
    data = os.urandom(1000)
    bucket = bus.names.checkpoint_blobs_bucket
    elsewhere = await put_blob(bus, "elsewhere", data)
    other_thread = await put_blob(bus, f"agent-1.other/{'0' * 32}", data, bucket=bucket)
    for ref in (elsewhere, other_thread):
        with pytest.raises(ContractError, match="must name an object"):
            await _put_ref(bus, ref)
    wrong = await put_blob(bus, f"agent-1.t/{'1' * 32}", os.urandom(1000), bucket=bucket)
    with pytest.raises(ContractError, match="SHA-256"):
        await _put_ref(bus, msgspec.structs.replace(wrong, sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(NotFoundError):
        await client.get("t")


async def _put_ref(bus: Bus, ref: BlobRef) -> Checkpoint:
    req = PutCheckpoint(agent_id="agent-1", thread_id="t", data_ref=ref)
    subject = bus.names.owner_endpoint("checkpoint", "put", "agent-1")
    return (await bus.request(subject, req, CheckpointReply)).checkpoint


async def test_corrupted_checkpoints_are_errors_never_data(
    bus: Bus, svc: Service, client: CheckpointClient
) -> None:
    kv = await bus.kv(bus.names.checkpoints_bucket)
    good = await client.put("t", b"good data", parent_id=None)
    tk = ThreadKeys.of("agent-1", "t")
    raw = msgspec.json.decode((await kv.get(tk.record(1))).value or b"")
    raw["data"] = base64.b64encode(b"evil data").decode()
    await kv.put(tk.record(1), msgspec.json.encode(raw))
    with pytest.raises(CheckpointCorruptedError, match="SHA-256"):
        await client.get("t")
    await kv.put(tk.record(1), b"\xff garbage")
    with pytest.raises(CheckpointCorruptedError, match="does not decode"):
        await client.get("t", good.checkpoint_id)
    await kv.put(tk.head, b"{}")
    with pytest.raises(CheckpointCorruptedError):
        await client.get("t")
    assert svc.metric("agentbus_checkpoint_corrupted_total") == 3

    # data in the Object Store replaced behind our back: the reader's digest check fails
    big = os.urandom(2 * 1024 * 1024)
    stored = await client.put("blob", big, parent_id=None)
    assert stored.data_ref is not None
    bucket = bus.names.checkpoint_blobs_bucket
    await put_object(bus, bucket, stored.data_ref.name, os.urandom(len(big)))
    with pytest.raises(CheckpointCorruptedError):
        await client.get("blob")
    await delete_object(bus, bucket, stored.data_ref.name)
    with pytest.raises(CheckpointCorruptedError, match="gone"):
        await client.get("blob")
    # other threads still work
    await client.put("other", b"fine", parent_id=None)
    assert (await client.get("other")).data == b"fine"


async def test_malformed_requests_get_400_and_service_keeps_serving(
    svc: Service, client: CheckpointClient
) -> None:
    subject = svc.bus.names.owner_endpoint("checkpoint", "put", "a")
    reply = await svc.bus.nc.request(subject, b"not json", timeout=5)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    with pytest.raises(ContractError):  # a get request sent to put
        await svc.bus.request(subject, GetCheckpoint(agent_id="a", thread_id="t"), CheckpointReply)
    with pytest.raises(ContractError):
        await svc.client().put("", b"x", parent_id=None)
    with pytest.raises(ContractError):
        await svc.bus.request(
            subject, PutCheckpoint(agent_id="a", thread_id="t" * 300), CheckpointReply
        )
    assert (
        svc.metric("agentbus_bad_messages_total", {"service": "checkpoint", "source": "put"}) == 2
    )
    stored = await client.put("t", b"still fine", parent_id=None)
    assert (await client.get("t")).checkpoint_id == stored.checkpoint_id
    assert encode(stored)  # replies are plain messages
