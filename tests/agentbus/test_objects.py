"""Objects written without rollup headers read back through nats-py's Object Store."""

from __future__ import annotations

import os

import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.bus.objects import (
    CHUNK_SIZE_BYTES,
    chunk_subject,
    delete_object,
    meta_subject,
    put_object,
    stream_name,
)

pytestmark = pytest.mark.nats


async def _stored(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_the_object_stores_refuse_rollups(bus: Bus) -> None:
    for bucket in (bus.names.blobs_bucket, bus.names.checkpoint_blobs_bucket):
        config = (await bus.js.stream_info(stream_name(bucket))).config
        assert config.allow_rollup_hdrs is False, bucket


async def test_put_and_delete_round_trip_through_nats_py(bus: Bus) -> None:
    bucket = bus.names.blobs_bucket
    stream = stream_name(bucket)
    obs = await bus.object_store(bucket)
    data = os.urandom(2 * CHUNK_SIZE_BYTES + 5)

    first = await put_object(bus, bucket, "a/b", data)
    assert (first.size, first.chunks) == (len(data), 3)
    assert (await obs.get("a/b")).data == data
    info = await obs.get_info("a/b")
    assert (info.nuid, info.digest, info.size) == (first.nuid, first.digest, len(data))

    # replaced: the old chunks and the older meta go
    second = await put_object(bus, bucket, "a/b", b"small")
    assert (await obs.get("a/b")).data == b"small"
    assert await _stored(bus, stream, chunk_subject(bucket, first.nuid)) == 0
    assert await _stored(bus, stream, meta_subject(bucket, "a/b")) == 1

    empty = await put_object(bus, bucket, "empty", b"")
    assert empty.chunks == 0
    assert (await obs.get("empty")).data == b""

    await delete_object(bus, bucket, "a/b")
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await obs.get("a/b")
    assert (await obs.get_info("a/b", show_deleted=True)).deleted
    assert await _stored(bus, stream, chunk_subject(bucket, second.nuid)) == 0
    assert await _stored(bus, stream, meta_subject(bucket, "a/b")) == 1
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await delete_object(bus, bucket, "a/b")
    assert [i.name for i in await obs.list(ignore_deletes=True)] == ["empty"]


async def test_nats_py_writes_are_refused(bus: Bus) -> None:
    obs = await bus.object_store(bus.names.blobs_bucket)
    with pytest.raises(nats.js.errors.APIError, match="rollup"):
        await obs.put("x", b"data")
