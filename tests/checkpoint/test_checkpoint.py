from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from agentbus.blobs import get_blob, put_blob
from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError, NotFoundError, UnavailableError
from agentbus.messages import (
    Checkpoint,
    CheckpointReply,
    GetCheckpoint,
    PutCheckpoint,
    encode,
)
from agentbus_checkpoint.keys import (
    escape_token,
    head_key,
    thread_prefix,
    unescape_token,
    version_key,
)
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings


@dataclass
class Service:
    bus: Bus
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    async def put(self, agent: str, thread: str, data: bytes, **kw: object) -> Checkpoint:
        req = PutCheckpoint(agent_id=agent, thread_id=thread, data=data, **kw)  # type: ignore[arg-type]
        reply = await self.bus.request(
            self.bus.names.endpoint("checkpoint", "put"), req, CheckpointReply
        )
        return reply.checkpoint

    async def get(self, agent: str, thread: str, checkpoint_id: str | None = None) -> Checkpoint:
        req = GetCheckpoint(agent_id=agent, thread_id=thread, checkpoint_id=checkpoint_id)
        reply = await self.bus.request(
            self.bus.names.endpoint("checkpoint", "get"), req, CheckpointReply
        )
        return reply.checkpoint


@pytest.fixture
async def svc(bus: Bus) -> AsyncIterator[Service]:
    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(serve(bus, stop, CheckpointSettings(), registry))
    service = Service(bus, registry)
    for _ in range(200):
        if task.done():
            task.result()
        try:
            await service.get("probe", "probe")
        except NotFoundError:
            break
        except UnavailableError:
            await asyncio.sleep(0.05)
    yield service
    stop.set()
    await asyncio.wait_for(task, 10)


def test_key_escaping_is_reversible_and_kv_safe() -> None:
    for value in ["echo-0", "a.b", "x=y", "spaces and/slash", "ünï", "=41", "*>"]:
        token = escape_token(value)
        assert unescape_token(token) == value
        assert all(c.isascii() and (c.isalnum() or c in "_-=") for c in token)
    assert escape_token("echo-0") == "echo-0"
    assert thread_prefix("a.b", "t 1") == "a=2Eb.t=201"


async def test_put_then_get_latest_and_by_id(svc: Service) -> None:
    first = await svc.put("agent-1", "thread.one", b"state-1", metadata={"step": "1"})
    assert first.version == 1
    assert first.parent_id is None
    assert first.sha256 == hashlib.sha256(b"state-1").hexdigest()
    second = await svc.put("agent-1", "thread.one", b"state-2", parent_id=first.checkpoint_id)
    assert second.version == 2
    assert second.checkpoint_id > first.checkpoint_id

    latest = await svc.get("agent-1", "thread.one")
    assert (latest.checkpoint_id, latest.data, latest.parent_id) == (
        second.checkpoint_id,
        b"state-2",
        first.checkpoint_id,
    )
    old = await svc.get("agent-1", "thread.one", first.checkpoint_id)
    assert (old.data, old.version, old.metadata) == (b"state-1", 1, {"step": "1"})

    # threads and agents are separate
    with pytest.raises(NotFoundError):
        await svc.get("agent-1", "thread-two")
    with pytest.raises(NotFoundError):
        await svc.get("agent-2", "thread.one")
    with pytest.raises(NotFoundError):
        await svc.get("agent-1", "thread.one", "000000000009-deadbeef")


async def test_stale_parent_is_a_conflict_naming_both_ids(svc: Service) -> None:
    first = await svc.put("a", "t", b"1")
    second = await svc.put("a", "t", b"2", parent_id=first.checkpoint_id)
    with pytest.raises(ConflictError) as info:
        await svc.put("a", "t", b"3", parent_id=first.checkpoint_id)
    assert first.checkpoint_id in str(info.value)
    assert second.checkpoint_id in str(info.value)
    # no parent on a non-empty thread is a conflict too
    with pytest.raises(ConflictError, match=second.checkpoint_id):
        await svc.put("a", "t", b"3")
    # a parent on an empty thread as well
    with pytest.raises(ConflictError):
        await svc.put("a", "empty", b"1", parent_id=first.checkpoint_id)
    assert (await svc.get("a", "t")).checkpoint_id == second.checkpoint_id
    assert svc.metric("agentbus_checkpoint_conflicts_total") == 3


async def test_concurrent_puts_on_one_parent_one_wins(svc: Service) -> None:
    base = await svc.put("a", "race", b"0")
    results = await asyncio.gather(
        *(svc.put("a", "race", bytes([i]), parent_id=base.checkpoint_id) for i in range(5)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Checkpoint)]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if r not in winners)
    assert (await svc.get("a", "race")).checkpoint_id == winners[0].checkpoint_id


async def test_large_value_round_trips_through_object_store(svc: Service) -> None:
    # 600 KiB: over the inline limit but small enough to send in one request
    medium = os.urandom(600 * 1024)
    stored = await svc.put("a", "big", medium)
    assert stored.data_ref is not None
    got = await svc.get("a", "big")
    assert got.data == medium
    assert got.data_ref is None

    # 2 MiB: too large for one request, uploaded first and sent by reference
    large = os.urandom(2 * 1024 * 1024)
    digest = hashlib.sha256(large).hexdigest()
    ref = await put_blob(svc.bus, f"checkpoints/sha256/{digest}", large)
    stored = await svc.put("a", "big", b"", data_ref=ref, parent_id=stored.checkpoint_id)
    assert stored.sha256 == digest
    got = await svc.get("a", "big")
    assert got.data == b""
    assert got.data_ref is not None
    assert got.sha256 == digest
    assert await get_blob(svc.bus, got.data_ref) == large
    assert svc.metric("agentbus_checkpoint_puts_total", {"storage": "blob"}) == 2


async def test_data_ref_must_be_content_addressed_and_match(svc: Service) -> None:
    data = os.urandom(1000)
    ref = await put_blob(svc.bus, "elsewhere", data)
    with pytest.raises(ContractError, match="content-addressed"):
        await svc.put("a", "t", b"", data_ref=ref)
    digest = hashlib.sha256(data).hexdigest()
    ref = await put_blob(svc.bus, f"checkpoints/sha256/{digest}", os.urandom(1000))
    with pytest.raises(ContractError, match="SHA-256"):
        await svc.put("a", "t", b"", data_ref=msgspec.structs.replace(ref, sha256=digest))
    with pytest.raises(NotFoundError):
        await svc.get("a", "t")


async def test_corrupted_records_are_errors_not_data(svc: Service) -> None:
    kv = await svc.bus.kv(svc.bus.names.checkpoints_bucket)
    good = await svc.put("a", "t", b"good data")
    key = version_key(thread_prefix("a", "t"), good.checkpoint_id)

    tampered = msgspec.structs.replace(
        await svc.get("a", "t"), data=b"evil data"
    )  # digest of the good data
    await kv.put(key, encode(tampered))
    with pytest.raises(ContractError, match="corrupted"):
        await svc.get("a", "t")

    await kv.put(key, b"\xff garbage")
    with pytest.raises(ContractError, match="corrupted"):
        await svc.get("a", "t", good.checkpoint_id)

    await kv.put(head_key(thread_prefix("a", "t")), b"{}")
    with pytest.raises(ContractError, match="corrupted"):
        await svc.get("a", "t")
    assert svc.metric("agentbus_checkpoint_corrupted_total") == 3
    # other threads still work
    await svc.put("a", "other", b"fine")
    assert (await svc.get("a", "other")).data == b"fine"


async def test_malformed_requests_get_400_and_service_keeps_serving(svc: Service) -> None:
    subject = svc.bus.names.endpoint("checkpoint", "put")
    reply = await svc.bus.nc.request(subject, b"not json", timeout=5)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    with pytest.raises(ContractError):
        await svc.bus.request(
            subject, GetCheckpoint(agent_id="a", thread_id="t"), CheckpointReply
        )  # wrong message type on put
    with pytest.raises(ContractError):
        await svc.put("", "t", b"x")
    with pytest.raises(ContractError):
        await svc.get("a", "t", "../../etc")
    assert (
        svc.metric("agentbus_bad_messages_total", {"service": "checkpoint", "source": "put"}) == 2
    )
    stored = await svc.put("a", "t", b"still fine")
    assert (await svc.get("a", "t")).checkpoint_id == stored.checkpoint_id


async def test_lost_compare_and_set_is_a_conflict_and_leaves_no_orphan(bus: Bus) -> None:
    # Call the store directly: the micro endpoint handles one request at a time, so
    # only concurrent stores (several service instances) race on the head.
    from agentbus_checkpoint.metrics import CheckpointMetrics
    from agentbus_checkpoint.store import CheckpointStore

    store = CheckpointStore(bus, CheckpointSettings(), CheckpointMetrics(CollectorRegistry()))
    base = await store.put(PutCheckpoint(agent_id="a", thread_id="t", data=b"0"))
    results = await asyncio.gather(
        *(
            store.put(
                PutCheckpoint(agent_id="a", thread_id="t", data=b"x", parent_id=base.checkpoint_id)
            )
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Checkpoint)]
    losers = [r for r in results if isinstance(r, ConflictError)]
    assert len(winners) == 1
    assert len(losers) == 3
    assert any("concurrent put won" in str(e) for e in losers)
    assert all(winners[0].checkpoint_id in str(e) for e in losers)
    kv = await bus.kv(bus.names.checkpoints_bucket)
    versions = [k for k in await kv.keys() if ".v." in k]
    assert len(versions) == 2  # base and the winner: losers' versions were removed
