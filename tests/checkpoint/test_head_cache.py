"""Heads cached by one service instance while another writes the thread (``HeadCache``).

Two stores on one bucket stand for two checkpoint service instances: each caches
the heads it last read or wrote, and each write the other makes leaves that cache
behind. A put built on a head that moved meanwhile must still land on the right
parent or conflict, never lose or overwrite a version.
"""

from __future__ import annotations

import pytest

from agentbus.bus import Bus
from agentbus.errors import CheckpointConflictError
from agentbus.messages import DeleteCheckpoints, GetCheckpoint
from agentbus_checkpoint.deletes import VersionDeletes
from agentbus_checkpoint.head import Head, HeadCache
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.keys import ThreadKeys
from tests._harness.checkpoint import bare_store, delete_thread, put_request

pytestmark = pytest.mark.nats


async def test_two_instances_taking_turns_on_one_thread_chain_every_version(bus: Bus) -> None:
    stores = (bare_store(bus), bare_store(bus))
    parent: str | None = None
    for n in range(6):  # each put finds the other instance's cached head one behind
        record, _ = await stores[n % 2].put(put_request("turns", b"v%d" % n, parent))
        assert record.version == n + 1 and record.parent_id == parent
        parent = record.checkpoint_id
    latest = await stores[0].get(GetCheckpoint(agent_id="a", thread_id="turns"))
    assert (latest.checkpoint_id, latest.data) == (parent, b"v5")


async def test_a_put_on_a_head_cached_before_another_instance_wrote_conflicts(bus: Bus) -> None:
    a, b = bare_store(bus), bare_store(bus)
    one, _ = await a.put(put_request("behind", b"1", None))
    two, _ = await b.put(put_request("behind", b"2", one.checkpoint_id))
    with pytest.raises(CheckpointConflictError) as info:  # a still caches version 1
        await a.put(put_request("behind", b"2'", one.checkpoint_id))
    assert info.value.latest_id == two.checkpoint_id
    latest = await b.get(GetCheckpoint(agent_id="a", thread_id="behind"))
    assert (latest.checkpoint_id, latest.data) == (two.checkpoint_id, b"2")


async def test_versions_deleted_by_another_instance_are_not_built_on(bus: Bus) -> None:
    a, b = bare_store(bus), bare_store(bus)
    one, _ = await a.put(put_request("del", b"1", None))
    two, _ = await a.put(put_request("del", b"2", one.checkpoint_id))  # a caches version 2
    await VersionDeletes(Housekeeping(b)).delete(
        DeleteCheckpoints(agent_id="a", thread_id="del", checkpoint_ids=[two.checkpoint_id])
    )
    with pytest.raises(CheckpointConflictError):  # on the deleted version
        await a.put(put_request("del", b"3 on 2", two.checkpoint_id))
    three, _ = await a.put(put_request("del", b"3", one.checkpoint_id))  # on the head as it is
    assert three.version == 3 and three.parent_id == one.checkpoint_id
    latest = await b.get(GetCheckpoint(agent_id="a", thread_id="del"))
    assert (latest.checkpoint_id, latest.data) == (three.checkpoint_id, b"3")


async def test_a_thread_deleted_by_another_instance_starts_over(bus: Bus) -> None:
    a, b = bare_store(bus), bare_store(bus)
    one, _ = await a.put(put_request("again", b"1", None))
    await delete_thread(b, "again")
    with pytest.raises(CheckpointConflictError):
        await a.put(put_request("again", b"2 on 1", one.checkpoint_id))
    fresh, _ = await a.put(put_request("again", b"new", None))
    assert fresh.version == 1 and fresh.parent_id is None
    latest = await b.get(GetCheckpoint(agent_id="a", thread_id="again"))
    assert (latest.checkpoint_id, latest.data) == (fresh.checkpoint_id, b"new")


def test_the_cache_keeps_the_newest_revision_and_drops_the_least_recently_used() -> None:
    cache = HeadCache(max_entries=2)
    cache.put("x", Head(None, 5))
    cache.put("x", Head(None, 3))  # an older read never replaces a newer head
    assert cache.get("x") == Head(None, 5)
    cache.put("y", Head(None, 1))
    assert cache.get("x") is not None  # x used last: y goes first
    cache.put("z", Head(None, 1))
    assert cache.get("y") is None and cache.get("x") is not None
    cache.forget("x")
    assert cache.get("x") is None


async def test_a_put_on_the_head_this_instance_wrote_does_not_read_it(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = bare_store(bus)
    one, _ = await store.put(put_request("own", b"1"))
    reads: list[str] = []
    read_head = store.read_head

    async def counted(tk: ThreadKeys) -> Head:
        reads.append(tk.head)
        return await read_head(tk)

    monkeypatch.setattr(store, "read_head", counted)
    two, _ = await store.put(put_request("own", b"2", one.checkpoint_id))
    assert two.version == 2 and reads == []  # the cached head, not a read
    with pytest.raises(CheckpointConflictError):
        await store.put(put_request("own", b"2'", one.checkpoint_id))
    assert reads  # a parent other than the cached head: read before refusing
