"""The registry's in-memory view of one heartbeat bucket (agents or nodes).

A ``LiveView`` is an ``agentbus.kv.mirror.KvMirror`` of a KV bucket whose entries
are heartbeat puts with a bucket TTL and limit markers (``agentbus.bus.Bus.ensure``)
plus what the registry makes of each key's change (``KvMirror``'s ``on_entry``):

* a put of a new key, or of a new incarnation (another ``started_at``) → ``joined``;
* a ``DEL`` marker (graceful leave: the owner deleted its key) → ``left``;
* any other way a listed entry leaves the view → ``lost``: a ``PURGE`` marker (the
  server's TTL expiry marker), a key a re-watch's replay no longer finds, or a put
  that replaced it with a bad value;
* a put of an instance (``instance_of``: incarnation, host, pid) that was itself seen
  within ``stale_after_s`` while another one has put since → ``duplicate``: two live
  instances share the id. One ``DuplicateEvent`` per set of instances (counted in
  ``agentbus_registry_duplicates_total``), and no join for their flapping. A new
  instance that replaces an old one (a restart) is a join as before: the old one
  never comes back.

The mirror owns the watch: replay into a staging copy, re-watch after errors and
reconnects with capped backoff, bad entries (undecodable, or an id that differs from
the key) reported through ``report_bad_message`` with ``source`` ``agents_kv`` /
``nodes_kv`` and skipped.

Events go to ``<p>.events.<entity>.<kind>`` with a ``Nats-Msg-Id`` that every
registry instance derives identically (joined: key + ``started_at``; left/lost: key +
the marker's revision, or ``started_at`` when the replay found no marker; duplicate:
key + the sorted instances), so
replicated or restarted registries do not duplicate them within the events stream's
duplicate window.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, Literal, TypeVar

from loguru import logger

from agentbus.bus import Bus
from agentbus.kv.mirror import KvChange, KvMirror
from agentbus.messages import AgentInfo, DuplicateEvent, Message, NodeInfo, encode, utcnow
from agentbus.service import ServiceMetrics
from agentbus_registry.metrics import RegistryMetrics

Info = TypeVar("Info", AgentInfo, NodeInfo)
Kind = Literal["joined", "left", "lost"]
_NEVER = datetime.min.replace(tzinfo=UTC)


class LiveView(Generic[Info]):
    """Live entries of one heartbeat bucket, kept current by a ``KvMirror``.

    Args:
        bus: the connected bus.
        entity: ``agent`` or ``node``: the event subject's entity token.
        bucket: KV bucket to watch.
        type_: ``AgentInfo`` or ``NodeInfo``.
        id_of: the entry's own id (must equal its KV key, else the entry is bad).
        instance_of: one line naming the running instance behind an entry (two
            different ones under one id at once are a duplicate).
        event: builds the event for ``(key, kind, last known info)``.
        service_metrics: where bad entries are counted (``source`` ``<entity>s_kv``).
        metrics: the registry's joins and departures counters.
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
        instance_of: Callable[[Info], str],
        event: Callable[[str, Kind, Info], Message],
        service_metrics: ServiceMetrics,
        metrics: RegistryMetrics,
        stale_after_s: float,
        replay_announce_window_s: float,
    ) -> None:
        self.bus = bus
        self.entity = entity
        self._id_of: Callable[[Info], str] = id_of
        self._instance_of: Callable[[Info], str] = instance_of
        self._instances: dict[str, dict[str, datetime]] = {}
        """Key -> instance -> when the registry last saw it put (within the TTL)."""
        self._reported: dict[str, frozenset[str]] = {}
        """Key -> the instances of the duplicate last reported for it."""
        self._event: Callable[[str, Kind, Info], Message] = event
        self._metrics = metrics
        self._stale_after = timedelta(seconds=stale_after_s)
        self._announce_window = timedelta(seconds=replay_announce_window_s)
        self.mirror: KvMirror[Info] = KvMirror(
            bus,
            bucket,
            type_,
            service_metrics=service_metrics,
            source=f"{entity}s_kv",
            check=self._refuse,
            on_entry=self._on_entry,
        )
        self.ready = self.mirror.ready
        """Set once the initial replay of the bucket has been applied."""

    def live(self, now: datetime | None = None) -> list[Info]:
        """Entries seen within ``stale_after_s``, sorted by key.

        An entry was last seen at the later of its ``heartbeat_at`` and the time the
        server stored it (``KvMirror.written_at``), so a restarted registry hides a
        stale entry found by its replay as well.
        """
        cutoff = (now or utcnow()) - self._stale_after
        written_at = self.mirror.written_at
        return [
            info
            for key, info in sorted(self.mirror.values.items())
            if max(_aware(info.heartbeat_at), written_at.get(key, _NEVER)) >= cutoff
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the bucket until ``stop`` is set (``KvMirror.run``)."""
        await self.mirror.run(stop)

    def _refuse(self, key: str, info: Info) -> str | None:
        """Why a decoded entry is bad (its id is not its key); None if it is good."""
        own_id = self._id_of(info)
        return None if own_id == key else f"entry id {own_id!r} differs from its key"

    def _duplicate_of(self, key: str, old: Info | None, new: Info) -> frozenset[str] | None:
        """The live instances of ``key`` if ``new`` flips back to one seen recently."""
        now = utcnow()
        instance = self._instance_of(new)
        seen = self._instances.setdefault(key, {})
        for name, at in list(seen.items()):
            if now - at > self._stale_after:
                del seen[name]
        known = instance in seen
        seen[instance] = now
        if len(seen) == 1:
            self._reported.pop(key, None)  # alone again: a later duplicate is news
        if old is None or not known or self._instance_of(old) == instance:
            return None
        return frozenset(seen)

    async def _on_entry(self, change: KvChange[Info]) -> None:
        key, old, new = change.key, change.old, change.new
        if new is not None:
            if (dup := self._duplicate_of(key, old, new)) is not None:
                if self._reported.get(key) != dup:
                    self._reported[key] = dup
                    await self._report_duplicate(key, dup)
                return  # flapping between live instances is no join
            if old is not None and old.started_at == new.started_at:
                return  # a heartbeat of a known incarnation
            if change.replayed and utcnow() - _aware(new.started_at) > self._announce_window:
                return  # announced by an earlier registry run
            self._metrics.joins.labels(self.entity).inc()
            logger.info("registry entry joined", entity=self.entity, key=key)
            await self._publish(key, "joined", new, new.started_at.isoformat())
        elif old is not None:
            kind: Kind = "left" if change.operation == "DEL" else "lost"
            self._metrics.departures.labels(self.entity, kind).inc()
            logger.info(
                "registry entry removed",
                entity=self.entity,
                key=key,
                kind=kind,
                operation=change.operation,
            )
            await self._publish(key, kind, old, str(change.revision or old.started_at.isoformat()))

    async def _report_duplicate(self, key: str, instances: frozenset[str]) -> None:
        self._metrics.duplicates.labels(self.entity).inc()
        named = sorted(instances)
        logger.error(
            "two live instances share one id", entity=self.entity, key=key, instances=named
        )
        event = DuplicateEvent(entity=self.entity, id=key, at=utcnow(), instances=named)  # type: ignore[arg-type]
        digest = hashlib.sha256("\n".join(named).encode()).hexdigest()[:16]
        await self._send("duplicate", event, f"{self.entity}.{key}.duplicate.{digest}")

    async def _publish(self, key: str, kind: Kind, info: Info, incarnation: str) -> None:
        msg_id = f"{self.entity}.{key}.{kind}.{incarnation}"
        await self._send(kind, self._event(key, kind, info), msg_id)

    async def _send(self, kind: str, event: Message, msg_id: str) -> None:
        subject = self.bus.names.event_subject(self.entity, kind)
        try:
            await self.bus.js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
        except Exception as exc:  # best effort: the view stays right without the event
            logger.warning("could not publish registry event", subject=subject, error=repr(exc))


def _aware(when: datetime) -> datetime:
    """``when`` as an aware datetime; a naive one (a sloppy writer) is taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
