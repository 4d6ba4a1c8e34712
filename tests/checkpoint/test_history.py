"""History, threads, fork, delete, retention and pending writes, against a real nats-server."""

from __future__ import annotations

import asyncio
import os

import pytest

from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError, NotFoundError
from agentbus.messages import Checkpoint, PendingWrite, Retention
from agentbus.state.checkpoints import CheckpointClient, checkpoint_owners
from agentbus_checkpoint.settings import CheckpointSettings
from tests._harness.checkpoint import Service, blob_names, running_checkpoint
from tests._harness.polling import eventually


async def _chain(
    client: CheckpointClient, thread: str, count: int, *, size: int = 8, **kw: object
) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    parent = None
    for i in range(count):
        data = os.urandom(size) if size > 8 else f"v{i + 1}".encode()
        out.append(
            await client.put(
                thread,
                data,
                parent_id=parent,
                metadata={"step": str(i + 1), "even": str((i + 1) % 2 == 0)},
                **kw,  # type: ignore[arg-type]
            )
        )
        parent = out[-1].checkpoint_id
    return out


async def test_history_is_newest_first_with_limit_cursor_and_filters(
    client: CheckpointClient,
) -> None:
    chain = await _chain(client, "t", 12)
    page = await client.list("t", limit=5)
    assert [c.version for c in page.checkpoints] == [12, 11, 10, 9, 8]
    assert all(c.data == b"" for c in page.checkpoints)
    assert page.next_before == chain[7].checkpoint_id
    page2 = await client.list("t", limit=5, before=page.next_before)
    assert [c.version for c in page2.checkpoints] == [7, 6, 5, 4, 3]
    page3 = await client.list("t", limit=5, before=page2.next_before)
    assert [c.version for c in page3.checkpoints] == [2, 1]
    assert page3.next_before is None
    assert [c.version async for c in client.history("t", page_size=4)] == list(range(12, 0, -1))

    even = await client.list("t", metadata={"even": "True"}, limit=4)
    assert [c.version for c in even.checkpoints] == [12, 10, 8, 6]
    assert [c.version for c in (await client.list("t", metadata={"step": "3"})).checkpoints] == [3]
    assert (await client.list("t", metadata={"step": "99"})).checkpoints == []
    assert (await client.list("empty")).checkpoints == []
    with pytest.raises(NotFoundError):
        await client.list("t", before="no-such-id")
    with pytest.raises(NotFoundError):  # an empty id is no KV key: not a 500
        await client.list("t", before="")


async def test_threads_lists_threads_and_namespaces(client: CheckpointClient) -> None:
    await _chain(client, "b", 2)
    await _chain(client, "a", 1)
    await client.put("a", b"x", parent_id=None, namespace="child:1")
    await CheckpointClient(client.bus, "someone-else").put("z", b"x", parent_id=None)
    threads = await client.threads()
    assert [(t.thread_id, t.namespace, t.version) for t in threads] == [
        ("a", "", 1),
        ("a", "child:1", 1),
        ("b", "", 2),
    ]
    assert [t.namespace for t in await client.threads("a")] == ["", "child:1"]
    owners = await checkpoint_owners(client.bus)
    assert owners.owners == sorted({client.agent_id, "someone-else"})
    assert (await checkpoint_owners(client.bus, limit=1)).truncated is True


async def test_fork_from_any_checkpoint_copies_the_state(
    bus: Bus, client: CheckpointClient
) -> None:
    chain = await _chain(client, "main", 3, size=2 * 1024 * 1024)  # data in the Object Store
    source = await client.get("main", chain[1].checkpoint_id)
    fork = await client.fork(
        "main", "experiment", checkpoint_id=chain[1].checkpoint_id, metadata={"why": "try"}
    )
    assert (fork.version, fork.parent_id) == (1, None)
    assert fork.forked_from is not None
    assert (fork.forked_from.thread_id, fork.forked_from.checkpoint_id) == (
        "main",
        chain[1].checkpoint_id,
    )
    assert fork.metadata == {"step": "2", "even": "True", "why": "try"}
    got = await client.get("experiment")
    assert got.data == source.data
    # the fork is a thread of its own: it grows, and outlives its source
    nxt = await client.put("experiment", b"next", parent_id=fork.checkpoint_id)
    assert nxt.version == 2
    assert await client.delete_thread("main") == 3
    assert (await client.get("experiment", fork.checkpoint_id)).data == source.data
    with pytest.raises(ConflictError, match="not empty"):
        await client.fork("experiment", "experiment")
    with pytest.raises(NotFoundError):
        await client.fork("main", "again")
    # forks across agents and namespaces
    other = await client.fork("experiment", "copied", new_agent_id="agent-2", new_namespace="n")
    assert (await CheckpointClient(bus, "agent-2").get("copied", namespace="n")).data == b"next"
    assert other.agent_id == "agent-2"


async def test_delete_thread_removes_everything_and_the_thread_starts_over(
    bus: Bus, client: CheckpointClient
) -> None:
    chain = await _chain(client, "t", 3, size=400 * 1024)
    await client.put("t", b"ns", parent_id=None, namespace="sub")
    await client.put_writes(
        "t", chain[-1].checkpoint_id, [_write("task", "ch", 0, os.urandom(20_000))]
    )
    kept = await client.put("keep", b"x", parent_id=None)
    assert len(await blob_names(bus)) == 4  # 3 versions + 1 large write
    assert await client.delete_thread("t") == 4
    assert await blob_names(bus) == set()
    kv = await bus.kv(bus.names.checkpoints_bucket)
    assert all(not k.startswith("agent-1.t.") for k in await kv.keys())
    assert await client.latest("t") is None
    assert await client.latest("t", namespace="sub") is None
    assert await client.delete_thread("t") == 0
    again = await client.put("t", b"fresh", parent_id=None)
    assert again.version == 1
    assert (await client.get("keep")).checkpoint_id == kept.checkpoint_id


async def test_keep_last_applies_on_every_put(bus: Bus, client: CheckpointClient) -> None:
    chain = await _chain(client, "t", 6, size=300 * 1024, retention=Retention(keep_last=2))
    page = await client.list("t")
    assert [c.version for c in page.checkpoints] == [6, 5]
    assert len(await blob_names(bus)) == 2  # pruned versions took their data along
    with pytest.raises(NotFoundError):
        await client.get("t", chain[0].checkpoint_id)
    (info,) = await client.threads("t")
    assert (info.oldest_version, info.retention) == (5, Retention(keep_last=2))
    # the policy sticks to the thread; a later put may change it
    await client.put("t", b"7", parent_id=chain[-1].checkpoint_id)
    assert len((await client.list("t")).checkpoints) == 2


async def test_prune_on_demand_by_age_keeps_the_latest(client: CheckpointClient) -> None:
    chain = await _chain(client, "t", 4)
    await client.put("t", b"sub", parent_id=None, namespace="n")
    assert await client.prune("t", retention=Retention(keep_last=3)) == 1
    assert [c.version for c in (await client.list("t")).checkpoints] == [4, 3, 2]

    async def all_old_pruned() -> bool:
        await client.prune("t", retention=Retention(max_age_s=0.2))
        return len((await client.list("t")).checkpoints) == 1

    await eventually(all_old_pruned, timeout_s=10, what="versions older than 0.2 s pruned")
    assert [c.checkpoint_id for c in (await client.list("t")).checkpoints] == [
        chain[-1].checkpoint_id
    ]
    assert (await client.get("t", namespace="n")).data == b"sub"  # the latest always stays


async def test_service_default_retention_and_sweep_age_out_idle_threads(bus: Bus) -> None:
    settings = CheckpointSettings(max_age_s=1.0, sweep_interval_s=0.3)
    async with running_checkpoint(bus, settings) as svc:
        client = svc.client()
        await _chain(client, "idle", 3)

        async def swept() -> bool:
            return [c.version for c in (await client.list("idle")).checkpoints] == [3]

        await eventually(swept, timeout_s=20, what="idle thread swept to its latest version")
        assert svc.metric("agentbus_checkpoint_deleted_total", {"reason": "retention"}) == 2


def _write(task: str, channel: str, idx: int, data: bytes, path: str = "") -> PendingWrite:
    return PendingWrite(task_id=task, channel=channel, idx=idx, data=data, task_path=path)


async def test_pending_writes_attach_to_a_checkpoint(
    svc: Service, client: CheckpointClient
) -> None:
    first = await client.put("t", b"s1", parent_id=None)
    big = os.urandom(100_000)
    n = await client.put_writes(
        "t",
        first.checkpoint_id,
        [_write("task-b", "out", 0, b"b0"), _write("task-b", "big", 1, big)],
    )
    assert n == 2
    n = await client.put_writes(
        "t",
        first.checkpoint_id,
        [_write("task-a", "out", 0, b"a0", path="~0"), _write("task-a", "__error__", -1, b"e1")],
    )
    assert n == 4
    # idx >= 0 again: the first value stays; idx < 0 again: replaced
    await client.put_writes(
        "t", first.checkpoint_id, [_write("task-a", "out", 0, b"changed", path="~0")]
    )
    await client.put_writes("t", first.checkpoint_id, [_write("task-a", "__error__", -1, b"e2")])
    got = await client.get("t")
    assert [(w.task_id, w.channel, w.idx, w.data) for w in got.writes] == [
        ("task-a", "__error__", -1, b"e2"),
        ("task-b", "out", 0, b"b0"),
        ("task-b", "big", 1, big),
        ("task-a", "out", 0, b"a0"),
    ]  # sorted by (task_path, task_id, idx)
    # writes belong to their checkpoint
    second = await client.put("t", b"s2", parent_id=first.checkpoint_id)
    assert (await client.get("t")).writes == []
    assert len((await client.get("t", first.checkpoint_id)).writes) == 4
    # writes may come before their checkpoint (LangGraph's async durability)
    await client.put_writes("t", "early-1", [_write("x", "c", 0, b"first")])
    early = await client.put("t", b"s3", parent_id=second.checkpoint_id, checkpoint_id="early-1")
    assert [w.data for w in (await client.get("t", early.checkpoint_id)).writes] == [b"first"]
    with pytest.raises(ContractError):
        await client.put_writes("t", "not an id", [_write("x", "c", 0, b"")])
    concurrent = await asyncio.gather(
        *(
            client.put_writes("t", second.checkpoint_id, [_write(f"t{i}", "c", 0, b"v")])
            for i in range(8)
        )
    )
    assert max(concurrent) == 8
    assert len((await client.get("t", second.checkpoint_id)).writes) == 8
    assert svc.metric("agentbus_checkpoint_writes_total") == 15
