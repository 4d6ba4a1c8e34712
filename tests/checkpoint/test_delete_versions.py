"""Deleting single versions by id (``DeleteCheckpoints``), against a real nats-server."""

from __future__ import annotations

import asyncio
import os

import pytest

from agentbus.bus import Bus
from agentbus.errors import CheckpointConflictError, ContractError, NotFoundError
from agentbus.messages import Checkpoint, CheckpointsDeleted, DeleteCheckpoints, PendingWrite
from agentbus.state.checkpoints import CheckpointClient
from tests._harness.checkpoint import Service, blob_names


async def _chain(client: CheckpointClient, thread: str, sizes: list[int]) -> list[Checkpoint]:
    """Versions 1..len(sizes), each with data of that size and one write of that size."""
    out: list[Checkpoint] = []
    for i, size in enumerate(sizes):
        parent = out[-1].checkpoint_id if out else None
        ckpt = await client.put(thread, os.urandom(size), parent_id=parent)
        write = PendingWrite(task_id=f"task-{i}", channel="out", data=os.urandom(size))
        await client.put_writes(thread, ckpt.checkpoint_id, [write])
        out.append(ckpt)
    return out


async def _kv_keys(bus: Bus, prefix: str) -> list[str]:
    kv = await bus.kv(bus.names.checkpoints_bucket)
    return [k for k in await kv.keys() if k.startswith(prefix)]


async def _versions(client: CheckpointClient, thread: str, namespace: str = "") -> list[int]:
    return [c.version async for c in client.history(thread, namespace=namespace, page_size=2)]


async def test_versions_deleted_by_id_leave_gaps_that_history_get_and_fork_skip(
    bus: Bus, svc: Service, client: CheckpointClient
) -> None:
    chain = await _chain(client, "t", [16, 300_000, 16, 300_000, 16])  # 2 and 4 in objects
    other = await client.put("t", b"ns", parent_id=None, namespace="sub")
    blobs_before = await blob_names(bus)
    gone = [chain[1].checkpoint_id, chain[3].checkpoint_id]

    assert await client.delete_checkpoints("t", [*gone, gone[0], "unknown-1"]) == 2

    assert await _versions(client, "t") == [5, 3, 1]
    assert [c.version for c in (await client.list("t", limit=2)).checkpoints] == [5, 3]
    page = await client.list("t", limit=2)
    assert [c.version for c in (await client.list("t", before=page.next_before)).checkpoints] == [1]
    for ckpt in (chain[0], chain[2], chain[4]):
        got = await client.get("t", ckpt.checkpoint_id)
        assert got.writes[0].task_id == f"task-{ckpt.version - 1}"  # writes kept
    for checkpoint_id in gone:
        with pytest.raises(NotFoundError):
            await client.get("t", checkpoint_id)
    assert (await client.get("t")).checkpoint_id == chain[4].checkpoint_id
    assert (await client.get("t", namespace="sub")).checkpoint_id == other.checkpoint_id
    # data and writes of the deleted versions: keys and objects gone, the others' kept
    keys = await _kv_keys(bus, "agent-1.t.")
    assert not [k for k in keys if any(v in k for v in (".v.000000000002.", ".v.000000000004."))]
    assert not [k for k in keys if any(i in k for i in gone)]
    assert len(blobs_before) - len(await blob_names(bus)) == 4  # 2 data + 2 write values
    # fork across the gap, and repeats are no-ops
    forked = await client.fork("t", "f", checkpoint_id=chain[2].checkpoint_id)
    assert (await client.get("f")).data == (await client.get("t", chain[2].checkpoint_id)).data
    assert forked.forked_from is not None
    assert await client.delete_checkpoints("t", gone) == 0
    assert await client.delete_checkpoints("t", []) == 0
    assert await client.delete_checkpoints("nobody", ["x-1"]) == 0
    assert svc.metric("agentbus_checkpoint_deleted_total", {"reason": "delete"}) == 2


async def test_deleting_the_latest_moves_the_head_back_and_never_reuses_a_version(
    bus: Bus, client: CheckpointClient
) -> None:
    chain = await _chain(client, "t", [16, 16, 16, 16])
    assert await client.delete_checkpoints("t", [chain[3].checkpoint_id, chain[2].checkpoint_id])
    latest = await client.get("t")
    assert latest.checkpoint_id == chain[1].checkpoint_id
    assert latest.writes[0].task_id == "task-1"
    [info] = await client.threads("t")
    assert (info.checkpoint_id, info.version) == (chain[1].checkpoint_id, 2)
    with pytest.raises(CheckpointConflictError):  # the deleted latest is no parent any more
        await client.put("t", b"x", parent_id=chain[3].checkpoint_id)
    nxt = await client.put("t", b"next", parent_id=chain[1].checkpoint_id)
    assert nxt.version == 5  # 3 and 4 are not given out again
    assert await _versions(client, "t") == [5, 2, 1]

    # every version gone: the thread is empty, and starts over above the old numbers
    ids = [chain[0].checkpoint_id, chain[1].checkpoint_id, nxt.checkpoint_id]
    assert await client.delete_checkpoints("t", ids) == 3
    assert await client.latest("t") is None
    assert await client.threads("t") == []
    assert await _versions(client, "t") == []
    with pytest.raises(CheckpointConflictError):
        await client.put("t", b"x", parent_id=nxt.checkpoint_id)
    again = await client.put("t", b"again", parent_id=None)
    assert again.version == 6
    assert await _versions(client, "t") == [6]
    assert await client.delete_thread("t") == 1
    assert (await client.put("t", b"fresh", parent_id=None)).version == 1


async def _put_after(
    client: CheckpointClient, delay_s: float, data: bytes, parent: str
) -> Checkpoint:
    await asyncio.sleep(delay_s)  # varies which of put and delete reaches the head first
    return await client.put("race", data, parent_id=parent)


async def test_a_put_racing_a_delete_of_the_latest_is_never_lost(client: CheckpointClient) -> None:
    live = await _chain(client, "race", [16] * 14)  # the versions that must read back
    for i in range(12):
        latest = live[-1]
        outcome, deleted = await asyncio.gather(
            _put_after(client, i % 4 * 0.002, f"r{i}".encode(), latest.checkpoint_id),
            client.delete_checkpoints("race", [latest.checkpoint_id]),
            return_exceptions=True,
        )
        assert deleted == 1
        live.pop()
        stored = not isinstance(outcome, CheckpointConflictError)  # else refused, not lost
        if stored:
            assert isinstance(outcome, Checkpoint), outcome
            live.append(outcome)
        got = await client.get("race")
        assert got.checkpoint_id == live[-1].checkpoint_id
        assert not stored or got.data == f"r{i}".encode()
        listed = [c.checkpoint_id async for c in client.history("race")]
        assert listed == [c.checkpoint_id for c in reversed(live)]


async def test_bad_delete_requests_are_400_and_the_service_keeps_serving(
    svc: Service, client: CheckpointClient
) -> None:
    subject = svc.bus.names.owner_endpoint("checkpoint", "delete_checkpoints", "agent-1")
    for ids in (["not an id"], ["ok-1", "../x"], [f"id-{i}" for i in range(1001)]):
        req = DeleteCheckpoints(agent_id="agent-1", thread_id="t", checkpoint_ids=ids)
        with pytest.raises(ContractError):
            await svc.bus.request(subject, req, CheckpointsDeleted)
    with pytest.raises(ContractError):
        await client.delete_checkpoints("t" * 300, ["x-1"])
    with pytest.raises(ContractError):
        await client.delete_checkpoints("t", ["bad id"])
    source = {"service": "checkpoint", "source": "delete_checkpoints"}
    assert svc.metric("agentbus_bad_messages_total", source) == 4
    stored = await client.put("t", b"fine", parent_id=None)
    assert await client.delete_checkpoints("t", [stored.checkpoint_id]) == 1
