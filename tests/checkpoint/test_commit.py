"""A version is one create-only record; index and head follow (agentbus_checkpoint.commit).

These tests stop a writer at the points between those messages, by writing what a
writer would have stored up to that point through the store itself, and check what
the next writer and the readers see.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.errors import CheckpointConflictError, NotFoundError
from agentbus.messages import Checkpoint, DeleteThread, GetCheckpoint, PutCheckpoint, encode, utcnow
from agentbus_checkpoint.commit import advance_head, create_version
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.settings import CheckpointSettings
from agentbus_checkpoint.store import CheckpointStore

pytestmark = pytest.mark.nats


def _store(bus: Bus) -> CheckpointStore:
    return CheckpointStore(bus, CheckpointSettings(), CheckpointMetrics(CollectorRegistry()))


async def _stored_only(store: CheckpointStore, thread: str, parent: Checkpoint) -> Checkpoint:
    """What a writer that died right after its record leaves: version 2, no index, no head."""
    tk = store.keys("a", thread)
    record = Checkpoint(
        checkpoint_id="died-after-record",
        agent_id="a",
        thread_id=thread,
        version=parent.version + 1,
        created_at=utcnow(),
        sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # "test"
        data=b"test",
        size_bytes=4,
        parent_id=parent.checkpoint_id,
    )
    assert await create_version(await store.kv(), tk.record(record.version), encode(record))
    return record


async def test_a_version_whose_writer_died_after_its_record_is_rolled_forward(bus: Bus) -> None:
    store = _store(bus)
    first, _ = await store.put(PutCheckpoint(agent_id="a", thread_id="t", data=b"one"))
    orphan = await _stored_only(store, "t", first)
    # readers follow the head, which still names version 1
    latest = await store.get(GetCheckpoint(agent_id="a", thread_id="t"))
    assert latest.checkpoint_id == first.checkpoint_id
    # the next writer on version 1 finds version 2 taken, finishes it, and loses to it
    with pytest.raises(CheckpointConflictError) as info:
        await store.put(
            PutCheckpoint(agent_id="a", thread_id="t", data=b"two", parent_id=first.checkpoint_id)
        )
    assert info.value.latest_id == orphan.checkpoint_id
    latest = await store.get(GetCheckpoint(agent_id="a", thread_id="t"))
    assert (latest.checkpoint_id, latest.version, latest.data) == (orphan.checkpoint_id, 2, b"test")
    by_id = await store.get(
        GetCheckpoint(agent_id="a", thread_id="t", checkpoint_id=orphan.checkpoint_id)
    )
    assert by_id.data == b"test"
    # and the thread goes on from it
    third, head = await store.put(
        PutCheckpoint(agent_id="a", thread_id="t", data=b"three", parent_id=orphan.checkpoint_id)
    )
    assert (third.version, third.data, head.checkpoint_id) == (3, b"", third.checkpoint_id)


async def test_a_branch_put_steps_over_a_version_taken_meanwhile(bus: Bus) -> None:
    store = _store(bus)
    first, _ = await store.put(PutCheckpoint(agent_id="a", thread_id="b", data=b"one"))
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
    store = _store(bus)
    tk = store.keys("a", "gone")
    first, _ = await store.put(PutCheckpoint(agent_id="a", thread_id="gone", data=b"one"))
    head = await store.read_head(tk)
    late = await _stored_only(store, "gone", first)
    await Housekeeping(store).delete_thread(DeleteThread(agent_id="a", thread_id="gone"))
    await create_version(await store.kv(), tk.record(late.version), encode(late))  # after the purge
    with pytest.raises(CheckpointConflictError, match="deleted meanwhile"):
        await advance_head(store, tk, late, head)
    assert await store.read_record(tk, late.version) is None
    with pytest.raises(NotFoundError):
        await store.get(GetCheckpoint(agent_id="a", thread_id="gone"))
    # the thread starts over at 1
    again, _ = await store.put(PutCheckpoint(agent_id="a", thread_id="gone", data=b"new"))
    assert again.version == 1
