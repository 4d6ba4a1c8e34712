"""KvMirror against a real nats-server: replay, updates, deletes, purges, TTL expiry,
bad entries, the owner's own writes, and a watch that starts over (after a failed
start and after a reconnect, whose replay drops keys gone while it was not looking)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from nats.js.api import KeyValueConfig
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.kv import liveness
from agentbus.kv.mirror import KvChange, KvMirror
from agentbus.service import ServiceMetrics
from agentbus.settings import BusSettings
from tests._harness.polling import eventually
from tests._harness.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


class Item(msgspec.Struct):
    n: int


def item(n: int) -> bytes:
    return msgspec.json.encode(Item(n))


async def holds(mirror: KvMirror[Item], expected: dict[str, int]) -> bool:
    return {k: v.n for k, v in mirror.values.items()} == expected


class Relay:
    """A TCP relay to the nats-server whose connections the test can cut (a network blip)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 4222
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        """Drop every relayed connection (new ones are accepted)."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def bucket(bus: Bus) -> AsyncIterator[str]:
    name = f"{bus.names.prefix}_items"
    # limit markers: a per-message TTL is allowed and its expiry reaches watchers
    await bus.js.create_key_value(KeyValueConfig(name, history=1, limit_marker_ttl=1.0))
    yield name
    with contextlib.suppress(Exception):
        await bus.js.delete_key_value(name)


def reporting(bus: Bus, bucket: str, registry: CollectorRegistry, **kw: Any) -> KvMirror[Item]:
    """A mirror of ``bucket`` reporting bad entries as ``{service="test", source="items"}``."""
    metrics = ServiceMetrics("test", registry)
    return KvMirror(bus, bucket, Item, service_metrics=metrics, source="items", check_s=0.2, **kw)


@contextlib.asynccontextmanager
async def running(mirror: KvMirror[Item]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_replay_updates_deletes_purges_ttl_and_bad_entries(bus: Bus, bucket: str) -> None:
    kv = await bus.kv(bucket)
    await kv.put("a", item(1))
    await kv.put("b", item(2))
    await kv.put("gone", item(3))
    await kv.delete("gone")
    await kv.put("bad", b"not json")
    registry = CollectorRegistry()
    changes: list[int] = []
    mirror = reporting(bus, bucket, registry, on_change=lambda: changes.append(1))
    async with running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        # the replay: live keys only; the bad entry skipped, counted and reported
        assert await holds(mirror, {"a": 1, "b": 2})
        assert mirror.live and len(changes) == 1
        assert mirror.revision("gone") > 0  # a delete marker's revision is known (for CAS)
        labels = {"service": "test", "source": "items"}
        assert registry.get_sample_value("agentbus_bad_messages_total", labels) == 1

        await kv.put("a", item(10))  # update
        await kv.delete("b")  # delete
        await kv.put("c", item(4))
        await kv.purge("c")  # purge
        await eventually(lambda: holds(mirror, {"a": 10}))

        # the same value again is not a change worth a callback; a new key is
        before = len(changes)
        await kv.put("a", item(10))
        await kv.put("d", item(5))
        await eventually(lambda: holds(mirror, {"a": 10, "d": 5}))
        assert len(changes) == before + 1

        # per-message TTL: the expiry arrives as a purge
        await kv.create("ttl", item(6), msg_ttl=1)
        await eventually(lambda: holds(mirror, {"a": 10, "d": 5, "ttl": 6}))
        await eventually(lambda: holds(mirror, {"a": 10, "d": 5}), timeout_s=15)


async def test_on_entry_tells_a_delete_from_a_purge_and_a_ttl_expiry(bus: Bus, bucket: str) -> None:
    kv = await bus.kv(bucket)
    await kv.put("old", item(1))
    await kv.put("liar", item(-1))  # refused by check below
    registry = CollectorRegistry()
    changes: list[tuple[str, int | None, int | None, str, bool]] = []

    async def on_entry(change: KvChange[Item]) -> None:
        if change.key == "boom":
            raise RuntimeError("a callback's error must not stop the watch")
        old, new = (v.n if v is not None else None for v in (change.old, change.new))
        changes.append((change.key, old, new, change.operation, change.replayed))
        assert change.revision > 0

    def refuse_negative(key: str, value: Item) -> str | None:
        return "negative" if value.n < 0 else None

    mirror = reporting(bus, bucket, registry, check=refuse_negative, on_entry=on_entry)

    async def seen(*expected: tuple[str, int | None, int | None, str, bool]) -> bool:
        return changes[-len(expected) :] == list(expected)

    async with running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        assert changes == [("old", None, 1, "PUT", True)]  # the replay, "liar" refused
        labels = {"service": "test", "source": "items"}
        assert registry.get_sample_value("agentbus_bad_messages_total", labels) == 1
        assert mirror.written_at["old"].tzinfo is not None

        await kv.put("old", item(1))  # the same value: no change, no callback
        await kv.put("boom", item(0))
        await kv.put("old", item(2))
        await eventually(lambda: seen(("old", 1, 2, "PUT", False)))
        assert len(changes) == 2 and mirror.values["boom"] == Item(0)
        await kv.delete("old")
        await eventually(lambda: seen(("old", 2, None, "DEL", False)))
        await kv.put("p", item(3))
        await kv.purge("p")
        await eventually(lambda: seen(("p", None, 3, "PUT", False), ("p", 3, None, "PURGE", False)))
        await kv.put("b", item(4))
        await kv.put("b", item(-4))  # a bad put removes the key
        await eventually(lambda: seen(("b", None, 4, "PUT", False), ("b", 4, None, "PUT", False)))
        assert registry.get_sample_value("agentbus_bad_messages_total", labels) == 2
        await kv.create("ttl", item(5), msg_ttl=1)
        await eventually(lambda: seen(("ttl", None, 5, "PUT", False)))
        await eventually(lambda: seen(("ttl", 5, None, "PURGE", False)), timeout_s=15)
        assert mirror.values == {"boom": Item(0)}


async def test_own_writes_apply_at_once_and_a_late_update_does_not_undo_them(
    bus: Bus, bucket: str
) -> None:
    kv = await bus.kv(bucket)
    changes: list[int] = []
    mirror: KvMirror[Item] = KvMirror(
        bus, bucket, Item, on_change=lambda: changes.append(1), check_s=0.2
    )
    async with running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        first = await kv.put("k", item(1))
        second = await kv.update("k", item(2), last=first)
        assert mirror.apply("k", second, Item(2))  # the owner's write, before the watch
        assert mirror.values["k"] == Item(2) and mirror.revision("k") == second
        assert not mirror.apply("k", first, Item(1))  # older than known: ignored
        before = len(changes)
        await kv.put("z", item(9))  # the watch has now delivered both writes of "k"
        await eventually(lambda: holds(mirror, {"k": 2, "z": 9}))
        assert len(changes) == before + 1  # only "z" was news


async def test_a_failed_start_is_retried(bus: Bus) -> None:
    name = f"{bus.names.prefix}_late"
    restarts: list[int] = []
    mirror: KvMirror[Item] = KvMirror(
        bus, name, Item, on_restart=lambda: restarts.append(1), check_s=0.2
    )
    async with running(mirror):
        await eventually(lambda: mirror.restarts >= 1)  # no bucket yet
        assert not mirror.ready.is_set()
        kv = await bus.js.create_key_value(KeyValueConfig(name, history=1))
        try:
            await kv.put("a", item(1))
            await eventually(lambda: holds(mirror, {"a": 1}), timeout_s=15)
            assert mirror.live and len(restarts) == mirror.restarts
        finally:
            await bus.js.delete_key_value(name)


async def test_watches_again_after_a_reconnect_and_drops_what_it_missed(
    bus: Bus, bucket: str, nats_url: str
) -> None:
    relay = Relay(nats_url)
    url = await relay.start()
    relayed = await Bus.connect(BusSettings(nats_url=url, prefix=bus.names.prefix), name="relay")
    try:
        kv = await bus.kv(bucket)
        await kv.put("a", item(1))
        await kv.put("b", item(2))
        changes: list[KvChange[Item]] = []

        async def on_entry(change: KvChange[Item]) -> None:
            changes.append(change)

        mirror: KvMirror[Item] = KvMirror(relayed, bucket, Item, on_entry=on_entry, check_s=0.2)
        async with running(mirror):
            await eventually(lambda: holds(mirror, {"a": 1, "b": 2}))
            # removing the stored messages of "a" leaves no entry for a watch to see
            await bus.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.a")
            await kv.put("c", item(3))
            await eventually(lambda: holds(mirror, {"a": 1, "b": 2, "c": 3}))
            before = relayed.nc.stats["reconnects"]
            relay.cut()
            await eventually(lambda: relayed.nc.stats["reconnects"] > before)
            await kv.put("d", item(4))
            # the new watch's replay replaced the mirror: "a" is gone
            await eventually(lambda: holds(mirror, {"b": 2, "c": 3, "d": 4}))
            assert mirror.restarts >= 1 and mirror.live
            gone = [c for c in changes if c.key == "a" and c.new is None]
            assert [(c.old, c.operation, c.revision, c.replayed) for c in gone] == [
                (Item(1), "ABSENT", 0, True)
            ]
    finally:
        await relayed.close()
        await relay.close()


async def test_resync_replays_afresh_and_waits_for_a_stalled_connection(
    bus: Bus, bucket: str, nats_url: str
) -> None:
    proxy = await TcpProxy(urlsplit(nats_url).port or 4222).start()
    stalled = await Bus.connect(BusSettings(nats_url=proxy.url, prefix=bus.names.prefix), name="s")
    try:
        kv = await bus.kv(bucket)
        await kv.put("a", item(1))
        await kv.put("b", item(2))
        mirror: KvMirror[Item] = KvMirror(stalled, bucket, Item, check_s=0.2)
        async with running(mirror):
            await eventually(lambda: holds(mirror, {"a": 1, "b": 2}))
            # gone without a marker: a live watch never hears of it; a fresh replay does
            await bus.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.a")
            await asyncio.wait_for(mirror.resync(), 10)
            assert await holds(mirror, {"b": 2})
            restarts = mirror.restarts
            await proxy.cut("stall")  # connected, but nothing gets through
            resync = asyncio.create_task(mirror.resync())
            await kv.put("c", item(3))
            await eventually(lambda: mirror.restarts > restarts, what="the watch started over")
            assert not resync.done()  # no replay can complete while stalled
            proxy.restore()
            await asyncio.wait_for(resync, 20)
            assert await holds(mirror, {"b": 2, "c": 3})
    finally:
        await stalled.close()
        await proxy.close()


async def test_a_watch_that_stopped_delivering_is_started_again(bus: Bus, bucket: str) -> None:
    """The watch's consumer is gone and nats-py's own activity check has ended (what a
    cluster's election storm left behind): the connection is up, nothing says the watch
    is dead, and only comparing its progress with the stream finds it."""
    kv = await bus.kv(bucket)
    await kv.put("a", item(1))
    mirror = reporting(bus, bucket, CollectorRegistry())
    async with running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        checks = [jsi._hbtask for s in bus.nc._subs.values() if (jsi := getattr(s, "_jsi", None))]
        assert checks, "the mirror's watch subscription"
        for check in checks:
            if check is not None:
                check.cancel()  # nats-py will not re-create its consumer
        stream = f"KV_{bucket}"
        for info in await bus.js.consumers_info(stream):
            await bus.js.delete_consumer(stream, info.name)
        restarts = mirror.restarts
        await kv.put("b", item(2))
        await eventually(lambda: holds(mirror, {"a": 1, "b": 2}), timeout_s=20)
        assert mirror.restarts > restarts


async def test_a_watch_started_after_the_last_message_expired_stays(
    bus: Bus, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's last sequence names a message (and its limit marker) gone by TTL,
    which a new watch never receives: that is nothing to deliver, not a dead watch."""
    monkeypatch.setattr(liveness, "STALE_CHECK_S", 0.3)
    monkeypatch.setattr(liveness, "BEHIND_RECHECK_S", 0.1)
    kv = await bus.kv(bucket)
    await kv.create("a", item(1), msg_ttl=1)

    async def all_expired() -> bool:
        state = (await bus.js.stream_info(f"KV_{bucket}")).state
        return state.messages == 0 and state.last_seq >= 2  # the entry, then its marker

    await eventually(all_expired, timeout_s=20, what="the entry and its marker expired")
    mirror = reporting(bus, bucket, CollectorRegistry())
    async with running(mirror):
        await asyncio.wait_for(mirror.ready.wait(), 10)
        await asyncio.sleep(2.0)  # several checks
        assert mirror.restarts == 0 and mirror.live
