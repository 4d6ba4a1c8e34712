"""Orphan checkpoint objects: swept after the grace, deleted at once when a put is refused."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from agentbus.bus import Bus
from agentbus.bus.blobs import put_blob
from agentbus.errors import CheckpointConflictError, ContractError
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointReply,
    PendingWrite,
    PutCheckpoint,
    Retention,
)
from agentbus_checkpoint.keys import ThreadKeys
from agentbus_checkpoint.settings import CheckpointSettings
from tests._harness.checkpoint import (
    AGED_S,
    GRACE_S,
    Service,
    blob_names,
    running_checkpoint,
    sweeper,
)
from tests._harness.polling import eventually

BIG = 300 * 1024
"""Over the inline limit (256 KiB), under the client's upload size: the service uploads."""
HUGE = 900 * 1024
"""Over one request: the client uploads first and puts a data_ref."""


def _swept(service: Service) -> float:
    return service.metric("agentbus_checkpoint_orphans_deleted_total", {"reason": "sweep"})


async def _upload(bus: Bus, name: str) -> BlobRef:
    return await put_blob(bus, name, os.urandom(1000), bucket=bus.names.checkpoint_blobs_bucket)


async def _put_ref(bus: Bus, ref: BlobRef, thread_id: str = "t") -> Checkpoint:
    req = PutCheckpoint(agent_id="agent-1", thread_id=thread_id, data_ref=ref)
    subject = bus.names.owner_endpoint("checkpoint", "put", "agent-1")
    return (await bus.request(subject, req, CheckpointReply)).checkpoint


async def test_sweep_of_an_empty_store_finds_nothing(bus: Bus) -> None:
    await bus.object_store(bus.names.checkpoint_blobs_bucket)  # provisioned, empty
    sweep, _ = sweeper(bus, grace_s=GRACE_S)
    assert await sweep.sweep() == 0


async def test_sweep_deletes_old_orphans_keeps_young_and_referenced(bus: Bus, svc: Service) -> None:
    client = svc.client()
    by_service = await client.put("t", os.urandom(BIG), parent_id=None)
    by_client = await client.put("t", os.urandom(HUGE), parent_id=by_service.checkpoint_id)
    in_namespace = await client.put("t", os.urandom(BIG), parent_id=None, namespace="sub:1")
    await client.put_writes(
        "t", by_client.checkpoint_id, [PendingWrite(task_id="x", channel="c", data=b"w" * 9000)]
    )
    referenced = await blob_names(bus)
    assert len(referenced) == 4  # three versions' data and one pending write's value
    orphans = {
        (await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")).name,  # the put never came
        (await _upload(bus, f"agent-1.t/w/{uuid.uuid4().hex}")).name,  # nor its writes
        (await _upload(bus, f"agent-1.gone/{uuid.uuid4().hex}")).name,  # a thread with no keys
        (await _upload(bus, f"agent-1.t.ns.sub=3A1/{uuid.uuid4().hex}")).name,
    }
    foreign = (await _upload(bus, "not/a/checkpoint/object")).name

    young, young_metrics = sweeper(bus, grace_s=3600)
    assert await young.sweep() == 0  # all younger than the grace: kept
    assert await blob_names(bus) == referenced | orphans | {foreign}
    assert _swept(young_metrics) == 0

    await asyncio.sleep(AGED_S)  # every object is now older than GRACE_S
    old, old_metrics = sweeper(bus, grace_s=GRACE_S, sweep_max=3)
    assert await old.sweep() == 3
    assert await old.sweep() == 1  # at most orphan_sweep_max per pass; the rest next pass
    assert _swept(old_metrics) == 4
    assert await blob_names(bus) == referenced | {foreign}
    assert await old.sweep() == 0
    for ckpt in (by_service, by_client):
        got = await client.get("t", ckpt.checkpoint_id)
        assert got.data_ref is not None and got.data_ref.name in referenced
    assert (await client.get("t", namespace="sub:1")).checkpoint_id == in_namespace.checkpoint_id
    assert (await client.get("t")).writes[0].data == b"w" * 9000


async def test_an_old_referenced_object_without_its_index_key_is_kept(
    bus: Bus, svc: Service
) -> None:
    """Data stored before the index key existed (or an index lost) is found in the records."""
    stored = await svc.client().put("t", os.urandom(BIG), parent_id=None)
    assert stored.data_ref is not None
    tk = ThreadKeys.of("agent-1", "t")
    kv = await bus.kv(bus.names.checkpoints_bucket)
    await kv.purge(tk.blob_index(stored.data_ref.name))
    await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")
    await asyncio.sleep(AGED_S)
    sweep, _ = sweeper(bus, grace_s=GRACE_S)
    assert await sweep.sweep() == 1
    assert await blob_names(bus) == {stored.data_ref.name}
    assert (await svc.client().get("t")).data_ref == stored.data_ref


async def test_undecodable_records_keep_their_threads_objects(bus: Bus, svc: Service) -> None:
    tk = ThreadKeys.of("agent-1", "t")
    kv = await bus.kv(bus.names.checkpoints_bucket)
    await kv.put(tk.record(7), b"\xff not a record")
    maybe = (await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")).name
    await _upload(bus, f"agent-1.u/{uuid.uuid4().hex}")
    await asyncio.sleep(AGED_S)
    sweep, _ = sweeper(bus, grace_s=GRACE_S)
    assert await sweep.sweep() == 1  # the other thread's orphan
    assert await blob_names(bus) == {maybe}  # cannot prove it unreferenced: kept


async def test_refused_puts_delete_their_uploads_at_once(bus: Bus, svc: Service) -> None:
    client = svc.client()
    first = await client.put("t", b"small", parent_id=None)
    # four puts race on one parent: one wins, the losers' service uploads go at once
    results = await asyncio.gather(
        *(client.put("t", os.urandom(BIG), parent_id=first.checkpoint_id) for _ in range(4)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Checkpoint)]
    assert len(winners) == 1
    assert all(isinstance(r, CheckpointConflictError) for r in results if r not in winners)
    assert winners[0].data_ref is not None
    assert await blob_names(bus) == {winners[0].data_ref.name}
    assert svc.metric("agentbus_checkpoint_orphans_deleted_total", {"reason": "refused"}) == 3
    # a stale parent with data the client uploaded: the client removes its upload
    with pytest.raises(CheckpointConflictError):
        await client.put("t", os.urandom(HUGE), parent_id=first.checkpoint_id)
    assert await blob_names(bus) == {winners[0].data_ref.name}


async def test_a_data_ref_must_be_fresh_and_unused(bus: Bus) -> None:
    async with running_checkpoint(bus, CheckpointSettings(orphan_grace_s=2)):
        used = await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")
        await _put_ref(bus, used)
        with pytest.raises(ContractError, match="already the data of a version"):
            await _put_ref(bus, used, thread_id="t")  # one object, one version
        stale = await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")
        await asyncio.sleep(1.2)  # past half the grace (setup, not an assertion)
        with pytest.raises(ContractError, match="upload it again"):
            await _put_ref(bus, stale)


async def test_retention_removes_the_index_key_with_its_version(bus: Bus, svc: Service) -> None:
    client = svc.client()
    parent = None
    for _ in range(3):
        parent = (
            await client.put(
                "t", os.urandom(BIG), parent_id=parent, retention=Retention(keep_last=1)
            )
        ).checkpoint_id
    js = bus.js
    bucket = bus.names.checkpoints_bucket
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.agent-1.t.b.*")
    assert len(info.state.subjects or {}) == 1
    assert len(await blob_names(bus)) == 1


async def test_the_service_sweeps_orphans_under_its_lease(bus: Bus) -> None:
    settings = CheckpointSettings(sweep_interval_s=0.2, orphan_grace_s=GRACE_S)
    async with running_checkpoint(bus, settings) as svc:
        kept = await svc.client().put("t", os.urandom(BIG), parent_id=None)
        orphan = (await _upload(bus, f"agent-1.t/{uuid.uuid4().hex}")).name

        async def swept() -> bool:
            return orphan not in await blob_names(bus)

        await eventually(swept, timeout_s=30, what="orphan swept by the service")
        assert svc.metric("agentbus_checkpoint_orphans_deleted_total", {"reason": "sweep"}) == 1
        assert kept.data_ref is not None
        assert await blob_names(bus) == {kept.data_ref.name}
