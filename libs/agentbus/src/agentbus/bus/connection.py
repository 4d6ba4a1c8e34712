"""One NATS connection plus the agentbus streams, buckets and typed requests.

Every service, agent and client holds one ``Bus`` per process (one connection per
process is the nats-py performance advice). ``Bus.ensure()`` creates the streams and
buckets of the contract if they are missing; it is idempotent and every service calls
it on start, so the services can start in any order.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from agentbus.bus.publisher import AckedPublisher
from agentbus.bus.requests import raw_request
from agentbus.errors import ContractError, UnavailableError
from agentbus.messages import Message, encode
from agentbus.names import Names
from agentbus.settings import BusSettings

R = TypeVar("R", bound=Message)

REGISTRY_TTL_S = 10.0
"""Agents and nodes that miss heartbeats for this long drop out of the registry."""
TASK_RECORD_TTL_S = 7 * 24 * 3600.0
"""Task records and blobs are kept this long after their last write."""
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
"""Age limit of streams the settings do not cover (the scheduler's advisories)."""
_LIMIT_FIELDS = ("max_age", "max_bytes", "max_msgs_per_subject", "discard")
"""Stream config fields ``Bus.ensure`` brings existing streams to."""
LOGS_MAX_MSGS_PER_AGENT = 10_000
"""Lines kept per ``<p>.logs.<agent_id>`` subject: one chatty agent cannot evict the others."""
_DAY_S = 24 * 3600.0


async def _any_server_listens(nats_url: str, timeout_s: float) -> bool:
    """Whether some server of ``nats_url`` accepts TCP connections.

    A refused URL then fails at once instead of running nats-py's retry loop until the
    connect timeout.
    """
    for server in nats_url.split(","):
        server = server.strip()
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222),
                timeout_s,
            )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False


class Bus:
    """A connected NATS client with the agentbus names and helpers.

    Attributes:
        nc: the nats-py client.
        js: its JetStream context.
        names: names derived from ``settings.prefix``.
        settings: the bus settings it was built from.
    """

    def __init__(
        self, nc: Client, settings: BusSettings, *, closed: asyncio.Event | None = None
    ) -> None:
        self.nc = nc
        self.closed = closed or asyncio.Event()
        """Set once the connection is closed, by ``close()`` or for good by the client
        (a server ``-ERR`` such as "maximum control line exceeded": nats-py does not
        reconnect after one)."""
        self.closing = False
        """Whether ``close()`` was called (a close not asked for is a lost connection)."""
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout_s)
        self.settings = settings
        self.names = Names(settings.prefix)
        self._kv: dict[str, KeyValue] = {}
        self._obs: dict[str, ObjectStore] = {}
        self._publisher: AckedPublisher | None = None

    @classmethod
    async def connect(cls, settings: BusSettings | None = None, *, name: str = "agentbus") -> Bus:
        """Connect to ``settings.nats_url`` and return a ``Bus``.

        Once connected, reconnects forever after a lost connection (nats-py's own
        reconnect loop); the first connect is bounded by ``connect_timeout_s``. A
        protocol error the server reports (``-ERR``, other than a stale connection or a
        permission denial) closes the connection for good: ``closed`` is then set while
        ``closing`` is false (``agentbus.service.run_service`` exits on it).

        Raises:
            UnavailableError: no server accepted the first connect in time.
        """
        settings = settings or BusSettings()

        async def _on_error(exc: Exception) -> None:
            logger.warning("nats connection error", error=repr(exc))

        closed = asyncio.Event()

        async def _on_closed() -> None:
            closed.set()

        if not await _any_server_listens(settings.nats_url, settings.connect_timeout_s):
            raise UnavailableError(f"no NATS server reachable at {settings.nats_url}")
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                nc = await nats.connect(
                    settings.nats_url.split(","),
                    name=name,
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=_on_error,
                    closed_cb=_on_closed,
                    drain_timeout=5,
                )
        except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
            raise UnavailableError(
                f"no NATS server reachable at {settings.nats_url} within "
                f"{settings.connect_timeout_s:.1f} s"
            ) from exc
        return cls(nc, settings, closed=closed)

    @property
    def lost(self) -> bool:
        """Whether the connection was closed for good without ``close()`` being called."""
        return self.closed.is_set() and not self.closing

    async def close(self) -> None:
        """Flush and close the connection (pending subscriptions are drained).

        With the server out of reach (nats-py reconnecting) there is nothing to drain
        to: the connection is closed at once, so a process can still stop cleanly.
        """
        self.closing = True
        if self._publisher is not None:
            await self._publisher.close()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.ConnectionClosedError, asyncio.CancelledError):
                pass
            except nats.errors.ConnectionReconnectingError:
                await self.nc.close()

    # -- provisioning ---------------------------------------------------------------
    async def ensure(self) -> None:
        """Create every stream, bucket and object store of the contract if missing."""
        n = self.names
        await self._ensure_stream(
            StreamConfig(
                name=n.tasks_stream,
                subjects=[n.tasks_all()],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )
        s = self.settings
        # Full results stream: new reports are refused, none unapplied dropped (retried).
        await self._ensure_stream(
            _limited_stream(
                n.results_stream,
                n.results_all(),
                s.results_max_age_s,
                s.results_max_bytes,
                retention=RetentionPolicy.WORK_QUEUE,
                discard=DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        await self._ensure_stream(
            _limited_stream(n.events_stream, n.events_all(), s.events_max_age_s, s.events_max_bytes)
        )
        await self._ensure_stream(
            _limited_stream(
                n.topics_stream,
                n.topics_all(),
                s.topics_max_age_s,
                s.topics_max_bytes,
                duplicate_window=120.0,
            )
        )
        await self._ensure_stream(
            _limited_stream(
                n.logs_stream,
                n.logs_all(),
                s.logs_max_age_s,
                s.logs_max_bytes,
                max_msgs_per_subject=LOGS_MAX_MSGS_PER_AGENT,
            )
        )
        # Inbox: WorkQueue, so a handled message leaves; an unread one when its TTL ends.
        await self._ensure_stream(
            _limited_stream(
                n.inbox_stream,
                n.inbox_all(),
                s.inbox_max_age_s,
                s.inbox_max_bytes,
                retention=RetentionPolicy.WORK_QUEUE,
                discard=DiscardPolicy.NEW,
                duplicate_window=120.0,
                allow_msg_ttl=True,
                allow_direct=True,
            )
        )
        # Task records are republished once stored, for waiters (Client.wait): a core
        # subscriber of $KV.<bucket>.<key> would also hear writes the store refuses.
        records = RePublish(src=f"$KV.{n.tasks_bucket}.>", dest=n.task_records_all())
        await self._ensure_kv(
            KeyValueConfig(n.tasks_bucket, history=1, ttl=TASK_RECORD_TTL_S, republish=records)
        )
        await self._republish(f"KV_{n.tasks_bucket}", records)
        for bucket in (n.agents_bucket, n.nodes_bucket):
            await self._ensure_kv(
                KeyValueConfig(bucket, history=1, ttl=REGISTRY_TTL_S, limit_marker_ttl=5.0)
            )
        await self._ensure_kv(KeyValueConfig(n.deployments_bucket, history=5))
        await self._ensure_kv(KeyValueConfig(n.placements_bucket, history=1))
        await self._ensure_kv(KeyValueConfig(n.secrets_keys_bucket, history=5))
        # Checkpoints: every version is its own key (history 1 suffices); a put is one
        # atomic batch (record, index, head), which the stream must allow (server >= 2.12).
        await self._ensure_kv(KeyValueConfig(n.checkpoints_bucket, history=1))
        await self._allow_atomic(f"KV_{n.checkpoints_bucket}")
        await self._ensure_kv(KeyValueConfig(n.leases_bucket, history=1, limit_marker_ttl=1.0))
        # Trace claims expire by per-message TTL (agentbus.traces); trace kinds make their
        # own counter streams on first use.
        await self._ensure_kv(
            KeyValueConfig(n.trace_claims_bucket, history=1, limit_marker_ttl=1.0)
        )
        await self._ensure_obs(n.blobs_bucket, ObjectStoreConfig(ttl=TASK_RECORD_TTL_S))
        # No TTL: checkpoint data lives as long as its version (retention deletes it).
        await self._ensure_obs(n.checkpoint_blobs_bucket, ObjectStoreConfig())

    async def _ensure_obs(self, bucket: str, config: ObjectStoreConfig) -> None:
        try:
            self._obs[bucket] = await self.js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            try:
                self._obs[bucket] = await self.js.create_object_store(bucket, config=config)
            except nats.js.errors.BadRequestError:  # created concurrently
                self._obs[bucket] = await self.js.object_store(bucket)

    async def _republish(self, stream: str, republish: RePublish) -> None:
        """Set ``republish`` on ``stream`` if it differs (a bucket made by an older version)."""
        config = (await self.js.stream_info(stream)).config
        current = config.republish
        if current is None or (current.src, current.dest) != (republish.src, republish.dest):
            config.republish = republish
            await self.js.update_stream(config)

    async def _allow_atomic(self, stream: str) -> None:
        """Turn on atomic batch publish (ADR-50) on ``stream`` if it is off."""
        config = (await self.js.stream_info(stream)).config
        if not config.allow_atomic:
            config.allow_atomic = True
            await self.js.update_stream(config)

    async def _ensure_stream(self, config: StreamConfig) -> None:
        """Create the stream, or bring an existing one's limits up to ``config``.

        Only the ``_LIMIT_FIELDS`` that ``config`` sets are compared and updated.
        """
        assert config.name is not None
        try:
            current = (await self.js.stream_info(config.name)).config
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:  # created concurrently
                current = (await self.js.stream_info(config.name)).config
        changed = {
            field: wanted
            for field in _LIMIT_FIELDS
            if (wanted := getattr(config, field)) is not None and getattr(current, field) != wanted
        }
        if changed:
            for field, wanted in changed.items():
                setattr(current, field, wanted)
            await self.js.update_stream(current)
            logger.info(
                "stream limits updated",
                stream=config.name,
                **{f: str(v) for f, v in changed.items()},
            )

    async def _ensure_kv(self, config: KeyValueConfig) -> None:
        try:
            self._kv[config.bucket] = await self.js.key_value(config.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                config.direct = True
                self._kv[config.bucket] = await self.js.create_key_value(config)
            except nats.js.errors.BadRequestError:
                self._kv[config.bucket] = await self.js.key_value(config.bucket)

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket ``bucket`` (cached per connection).

        Raises:
            UnavailableError: the bucket does not exist (nobody ran ``ensure()``).
        """
        if (kv := self._kv.get(bucket)) is None:
            try:
                kv = self._kv[bucket] = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError as exc:
                raise UnavailableError(f"KV bucket {bucket!r} does not exist yet") from exc
        return kv

    async def object_store(self, bucket: str | None = None) -> ObjectStore:
        """The Object Store ``bucket`` (default: the blobs bucket), cached per connection.

        Raises:
            UnavailableError: the bucket does not exist (nobody ran ``ensure()``).
        """
        bucket = bucket or self.names.blobs_bucket
        if (obs := self._obs.get(bucket)) is None:
            try:
                obs = self._obs[bucket] = await self.js.object_store(bucket)
            except nats.js.errors.NotFoundError as exc:
                raise UnavailableError(f"Object Store {bucket!r} does not exist") from exc
        return obs

    # -- messaging ------------------------------------------------------------------
    async def publisher(self) -> AckedPublisher:
        """This connection's ``AckedPublisher`` (acked publishes, many in flight)."""
        if self._publisher is None:
            self._publisher = AckedPublisher(self.nc, timeout_s=self.settings.request_timeout_s)
        await self._publisher.start()
        return self._publisher

    async def request(
        self, subject: str, payload: Message, reply: type[R], *, timeout_s: float | None = None
    ) -> R:
        """Send ``payload`` to a service endpoint and decode the reply as ``reply``.

        Raises:
            UnavailableError: no service is subscribed to ``subject``.
            RequestTimeoutError: no reply within ``timeout_s`` (default from settings).
            ContractError: the reply did not decode as ``reply``, or the service
                rejected the request as invalid.
            AgentBusError: the error the service reported (mapped by its code).
        """
        msg = await raw_request(self, subject, encode(payload), timeout_s=timeout_s)
        try:
            return msgspec.json.decode(msg.data, type=reply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError(f"reply on {subject!r} is not a {reply.__name__}: {exc}") from exc

    async def publish_event(self, entity: str, kind: str, event: Message) -> None:
        """Append ``event`` to the events stream on ``<p>.events.<entity>.<kind>``."""
        await self.js.publish(self.names.event_subject(entity, kind), encode(event))


def _limited_stream(
    name: str,
    subject: str,
    max_age_s: float,
    max_bytes: int,
    *,
    retention: RetentionPolicy = RetentionPolicy.LIMITS,
    discard: DiscardPolicy = DiscardPolicy.OLD,
    **extra: Any,
) -> StreamConfig:
    """A file stream kept ``max_age_s`` and ``max_bytes`` at most (0: no byte limit)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        max_age=max_age_s,
        max_bytes=max_bytes or -1,
        discard=discard,
        **extra,
    )
