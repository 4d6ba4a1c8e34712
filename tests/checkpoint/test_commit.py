"""A version is one create-only record; index and head follow (agentbus_checkpoint.commit).

These tests stop a writer at the points between those messages, by writing what a
writer would have stored up to that point through the store itself, and check what
the next writer and the readers see.
"""

from __future__ import annotations

import pytest

from agentbus.bus import Bus
from agentbus.errors import CheckpointConflictError, NotFoundError
from agentbus.messages import (
    Checkpoint,
    CheckpointIndex,
    DeleteCheckpoints,
    GetCheckpoint,
    PutCheckpoint,
    Retention,
    encode,
    utcnow,
)
from agentbus_checkpoint.commit import advance_head, create_version
from agentbus_checkpoint.deletes import VersionDeletes
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.store import CheckpointStore
from tests._harness.checkpoint import bare_store, delete_thread, put_request

pytestmark = pytest.mark.nats


def _record(thread: str, version: int, parent_id: str | None, cid: str) -> Checkpoint:
    return Checkpoint(
        checkpoint_id=cid,
        agent_id="a",
        thread_id=thread,
        version=version,
        created_at=utcnow(),
        sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # "test"
        data=b"test",
        size_bytes=4,
        parent_id=parent_id,
    )


async def _stored_only(
    store: CheckpointStore,
    thread: str,
    parent: Checkpoint | None,
    cid: str = "died-after-record",
) -> Checkpoint:
    """What a writer that died right after its record leaves: the record, no head."""
    record = _record(
        thread, parent.version + 1 if parent else 1, parent.checkpoint_id if parent else None, cid
    )
    tk = store.keys("a", thread)
    assert await create_version(await store.kv(), tk.record(record.version), encode(record))
    return record


async def test_a_version_whose_writer_died_after_its_record_is_rolled_forward(bus: Bus) -> None:
    store = bare_store(bus)
    first, _ = await store.put(put_request("t", b"one"))
    orphan = await _stored_only(store, "t", first)
    # readers follow the head, which still names version 1
    latest = await store.get(GetCheckpoint(agent_id="a", thread_id="t"))
    assert latest.checkpoint_id == first.checkpoint_id
    # the next writer on version 1 finds version 2 taken, finishes it, and loses to it
    with pytest.raises(CheckpointConflictError) as info:
        await store.put(put_request("t", b"two", first.checkpoint_id))
    assert info.value.latest_id == orphan.checkpoint_id
    latest = await store.get(GetCheckpoint(agent_id="a", thread_id="t"))
    assert (latest.checkpoint_id, latest.version, latest.data) == (orphan.checkpoint_id, 2, b"test")
    by_id = await store.get(
        GetCheckpoint(agent_id="a", thread_id="t", checkpoint_id=orphan.checkpoint_id)
    )
    assert by_id.data == b"test"
    # and the thread goes on from it
    third, head = await store.put(put_request("t", b"three", orphan.checkpoint_id))
    assert (third.version, third.data, head.checkpoint_id) == (3, b"", third.checkpoint_id)


async def test_a_branch_put_steps_over_a_version_taken_meanwhile(bus: Bus) -> None:
    store = bare_store(bus)
    first, _ = await store.put(put_request("b", b"one"))
    orphan = await _stored_only(store, "b", first)
    branch, head = await store.put(
        PutCheckpoint(
            agent_id="a", thread_id="b", data=b"x", parent_id=first.checkpoint_id, branch=True
        )
    )
    assert (branch.version, head.checkpoint_id) == (3, branch.checkpoint_id)
    history = [(await store.read_record(store.keys("a", "b"), v)) for v in (1, 2, 3)]
    assert [r.checkpoint_id if r else None for r in history] == [
        first.checkpoint_id,
        orphan.checkpoint_id,
        branch.checkpoint_id,
    ]


async def test_a_thread_deleted_between_record_and_head_takes_the_record_along(
    bus: Bus,
) -> None:
    store = bare_store(bus)
    tk = store.keys("a", "gone")
    first, _ = await store.put(put_request("gone", b"one"))
    head = await store.read_head(tk)
    late = await _stored_only(store, "gone", first)
    await delete_thread(store, "gone")
    await create_version(await store.kv(), tk.record(late.version), encode(late))  # after the purge
    with pytest.raises(CheckpointConflictError, match="deleted meanwhile"):
        await advance_head(store, tk, late, head)
    assert await store.read_record(tk, late.version) is None
    with pytest.raises(NotFoundError):
        await store.get(GetCheckpoint(agent_id="a", thread_id="gone"))
    # the thread starts over at 1
    again, _ = await store.put(put_request("gone", b"new"))
    assert again.version == 1


async def test_a_first_put_whose_thread_is_deleted_before_its_head_leaves_no_head(
    bus: Bus,
) -> None:
    store = bare_store(bus)
    tk = store.keys("a", "first")
    head = await store.read_head(tk)  # no head yet (revision 0)
    record = await _stored_only(store, "first", None, "first-put")
    await delete_thread(store, "first")
    with pytest.raises(CheckpointConflictError, match="deleted meanwhile"):
        await advance_head(store, tk, record, head)  # its compare-and-set on 0 still lands
    with pytest.raises(NotFoundError):  # an empty thread, not a head naming nothing
        await store.get(GetCheckpoint(agent_id="a", thread_id="first"))


async def test_a_put_whose_thread_was_deleted_and_started_again_drops_its_record(
    bus: Bus,
) -> None:
    store = bare_store(bus)
    tk = store.keys("a", "again")
    first, _ = await store.put(put_request("again", b"1"))
    head = await store.read_head(tk)
    late = await _stored_only(store, "again", first, "late")
    await delete_thread(store, "again")
    await create_version(await store.kv(), tk.record(late.version), encode(late))  # after it
    fresh, _ = await store.put(put_request("again", b"new"))
    with pytest.raises(CheckpointConflictError) as info:
        await advance_head(store, tk, late, head)
    assert info.value.latest_id == fresh.checkpoint_id
    assert await store.read_record(tk, late.version) is None
    assert (await store.get(GetCheckpoint(agent_id="a", thread_id="again"))).data == b"new"


async def test_a_stale_put_never_takes_the_number_of_a_deleted_version(bus: Bus) -> None:
    store = bare_store(bus)
    tk = store.keys("a", "reuse")
    a, _ = await store.put(put_request("reuse", b"a"))
    stale = await store.read_head(tk)  # a put that read the head at version 1
    b, _ = await store.put(put_request("reuse", b"b", a.checkpoint_id))
    await VersionDeletes(Housekeeping(store)).delete(
        DeleteCheckpoints(agent_id="a", thread_id="reuse", checkpoint_ids=[b.checkpoint_id])
    )
    late = await _stored_only(store, "reuse", a, "late")  # number 2 is free again in KV
    with pytest.raises(CheckpointConflictError):
        await advance_head(store, tk, late, stale)
    assert await store.read_record(tk, 2) is None
    assert (await store.get(GetCheckpoint(agent_id="a", thread_id="reuse"))).data == b"a"
    c, _ = await store.put(put_request("reuse", b"c", a.checkpoint_id))
    assert c.version == 3


async def test_deleting_a_version_whose_head_is_not_written_yet_fences_its_put(
    bus: Bus,
) -> None:
    # LangGraph chooses its ids, so a delete may name a version whose put is between
    # its record (and id index) and its head.
    store = bare_store(bus)
    tk = store.keys("a", "fence")
    a, _ = await store.put(put_request("fence", b"a"))
    head = await store.read_head(tk)
    late = await _stored_only(store, "fence", a, "in-flight")
    await (await store.kv()).put(tk.index(late.checkpoint_id), encode(CheckpointIndex(version=2)))
    deleted = await VersionDeletes(Housekeeping(store)).delete(
        DeleteCheckpoints(agent_id="a", thread_id="fence", checkpoint_ids=["in-flight"])
    )
    assert deleted == 1
    with pytest.raises(CheckpointConflictError):
        await advance_head(store, tk, late, head)
    got = await store.get(GetCheckpoint(agent_id="a", thread_id="fence"))
    assert (got.checkpoint_id, got.data) == (a.checkpoint_id, b"a")


async def test_a_head_moved_by_retention_is_written_again(bus: Bus) -> None:
    store = bare_store(bus)
    house = Housekeeping(store)
    tk = store.keys("a", "kept")
    one, _ = await store.put(put_request("kept", b"1"))
    two, _ = await store.put(put_request("kept", b"2", one.checkpoint_id))
    head = await store.read_head(tk)
    late = await _stored_only(store, "kept", two, "three")
    await house.apply_retention(tk, Retention(keep_last=1))  # moves the head's oldest
    moved = await advance_head(store, tk, late, head)
    assert moved.value is not None
    assert (moved.value.checkpoint_id, moved.value.oldest_version) == ("three", 2)
