"""The registry's in-memory view of one heartbeat bucket (agents or nodes).

A ``LiveView`` watches every key of a KV bucket whose entries are heartbeat puts
with a bucket TTL and limit markers (``agentbus.bus.Bus.ensure``):

* a put of a new key, or of a new incarnation (another ``started_at``) → ``joined``;
* a ``DEL`` marker (graceful leave: the owner deleted its key) → ``left``;
* a ``PURGE`` marker (the server's TTL expiry marker) → ``lost``.

Events go to ``<p>.events.<entity>.<kind>`` with a ``Nats-Msg-Id`` that every
registry instance derives identically (joined: key + ``started_at``; left/lost: key +
the marker's stream sequence), so replicated or restarted registries do not
duplicate them within the events stream's duplicate window. Values that do not
decode are reported with ``report_bad_message`` and skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Literal, TypeVar

import msgspec
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.messages import AgentInfo, Message, NodeInfo, encode, utcnow
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_registry.metrics import RegistryMetrics

Info = TypeVar("Info", AgentInfo, NodeInfo)
Kind = Literal["joined", "left", "lost"]


@dataclass(slots=True)
class _Live(Generic[Info]):
    info: Info
    last_seen: datetime
    """The later of the heartbeat's ``heartbeat_at`` and its KV write time (UTC)."""


class LiveView(Generic[Info]):
    """Live entries of one heartbeat bucket, kept current by a KV watch.

    Args:
        bus: the connected bus.
        entity: ``agent`` or ``node``: the event subject's entity token.
        bucket: KV bucket to watch.
        type_: ``AgentInfo`` or ``NodeInfo``.
        id_of: the entry's own id (must equal its KV key).
        event: builds the event for ``(key, kind, last known info)``.
        stale_after_s: entries not seen for this long are not listed.
        replay_announce_window_s: entries found by the initial replay are announced
            only if they started less than this long ago.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        entity: str,
        bucket: str,
        type_: type[Info],
        id_of: Callable[[Info], str],
        event: Callable[[str, Kind, Info], Message],
        service_metrics: ServiceMetrics,
        metrics: RegistryMetrics,
        stale_after_s: float,
        replay_announce_window_s: float,
    ) -> None:
        self.bus = bus
        self.entity = entity
        self.bucket = bucket
        self._decoder: msgspec.json.Decoder[Info] = msgspec.json.Decoder(type_)
        self._id_of: Callable[[Info], str] = id_of
        self._event: Callable[[str, Kind, Info], Message] = event
        self._service_metrics = service_metrics
        self._metrics = metrics
        self._stale_after = timedelta(seconds=stale_after_s)
        self._announce_window = timedelta(seconds=replay_announce_window_s)
        self._entries: dict[str, _Live[Info]] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._stopping = False
        self.ready = asyncio.Event()
        """Set once the initial replay of the bucket has been applied."""

    def live(self, now: datetime | None = None) -> list[Info]:
        """Entries seen within ``stale_after_s``, sorted by key."""
        cutoff = (now or utcnow()) - self._stale_after
        return [
            live.info for key, live in sorted(self._entries.items()) if live.last_seen >= cutoff
        ]

    async def run(self) -> None:
        """Watch the bucket until ``stop()``; re-watches (and resyncs) after an error."""
        while not self._stopping:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    break
                logger.warning("registry watch failed", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """End the watch; ``run()`` returns soon after."""
        self._stopping = True
        if self._watcher is not None:
            try:
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:
                logger.debug("watcher stop failed", bucket=self.bucket, error=repr(exc))

    async def _watch_once(self) -> None:
        kv = await self.bus.kv(self.bucket)
        self._watcher = watcher = await kv.watch(">")
        replaying, replayed = True, set[str]()
        async for entry in watcher:
            if entry is None:  # end of the initial replay
                if replaying:
                    replaying = False
                    for key in set(self._entries) - replayed:  # gone while not watching
                        await self._remove(key, "lost", revision=0)
                    self.ready.set()
                continue
            if replaying:
                replayed.add(entry.key)
            if entry.operation in ("DEL", "PURGE"):
                kind: Kind = "left" if entry.operation == "DEL" else "lost"
                await self._remove(entry.key, kind, revision=entry.revision or 0)
            else:
                await self._apply_put(entry, replaying=replaying)

    async def _apply_put(self, entry: KeyValue.Entry, *, replaying: bool) -> None:
        key = entry.key
        try:
            info = self._decoder.decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._bad(key, f"not a valid {self.entity} entry: {exc}")
            return
        if self._id_of(info) != key:
            await self._bad(key, f"entry id {self._id_of(info)!r} differs from its key")
            return
        last_seen = _aware(info.heartbeat_at)
        written: object = entry.created  # typed int by nats-py, a UTC datetime in fact
        if isinstance(written, datetime) and written > last_seen:
            last_seen = written
        previous = self._entries.get(key)
        self._entries[key] = _Live(info, last_seen)
        if previous is not None and previous.info.started_at == info.started_at:
            return  # a heartbeat of a known incarnation
        if replaying and utcnow() - _aware(info.started_at) > self._announce_window:
            return  # announced by an earlier registry run
        self._metrics.joins.labels(self.entity).inc()
        logger.info("registry entry joined", entity=self.entity, key=key)
        msg_id = f"{self.entity}.{key}.joined.{info.started_at.isoformat()}"
        await self._publish(key, "joined", info, msg_id)

    async def _remove(self, key: str, kind: Kind, *, revision: int) -> None:
        live = self._entries.pop(key, None)
        if live is None:
            return
        self._metrics.departures.labels(self.entity, kind).inc()
        logger.info("registry entry removed", entity=self.entity, key=key, kind=kind)
        msg_id = f"{self.entity}.{key}.{kind}.{revision or live.info.started_at.isoformat()}"
        await self._publish(key, kind, live.info, msg_id)

    async def _publish(self, key: str, kind: Kind, info: Info, msg_id: str) -> None:
        subject = self.bus.names.event_subject(self.entity, kind)
        try:
            await self.bus.js.publish(
                subject, encode(self._event(key, kind, info)), headers={"Nats-Msg-Id": msg_id}
            )
        except Exception as exc:  # best effort: the view stays right without the event
            logger.warning("could not publish registry event", subject=subject, error=repr(exc))

    async def _bad(self, key: str, reason: str) -> None:
        await report_bad_message(
            self.bus,
            self._service_metrics,
            source=f"{self.entity}s_kv",
            subject=f"$KV.{self.bucket}.{key}",
            reason=reason,
        )


def _aware(when: datetime) -> datetime:
    """``when`` as an aware datetime; a naive one (a sloppy writer) is taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
