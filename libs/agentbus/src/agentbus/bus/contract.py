"""The streams, KV buckets and object stores of the contract, created by part.

Every one is created with ``stream_replicas(bus)`` replicas (R3 on a cluster of three
or more servers, ``BusSettings.stream_replicas``); existing ones with fewer are raised
to it, and a raise the cluster refuses is logged (``agentbus cluster`` shows it).

``Bus.ensure(parts)`` calls ``ensure_contract``. Without credentials every process may
create everything, and every service creates every part on start, so the services can
start in any order. With credentials each service creates only the parts it owns
(``SERVICE_PARTS``), the ones its permissions cover (``agentbus.auth.permissions``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from loguru import logger
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentbus.settings import BusSettings

if TYPE_CHECKING:
    from agentbus.bus.connection import Bus

REGISTRY_TTL_S = 10.0
"""Agents and nodes that miss heartbeats for this long drop out of the registry."""
TASK_RECORD_TTL_S = 7 * 24 * 3600.0
"""Task records and blobs are kept this long after their last write."""
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
"""Age limit of streams the settings do not cover (the scheduler's advisories)."""
LOGS_MAX_MSGS_PER_AGENT = 10_000
"""Lines kept per ``<p>.logs.<agent_id>`` subject: one chatty agent cannot evict the others."""
_LIMIT_FIELDS = ("max_age", "max_bytes", "max_msgs_per_subject", "discard")
"""Stream config fields ``ensure`` brings existing streams to."""

PARTS: tuple[str, ...] = (
    "tasks",
    "events",
    "agents",
    "logs",
    "registry",
    "fleet",
    "checkpoints",
)
"""Parts of the contract: ``tasks`` (tasks and results streams, task records, dead
letters, leases, approvals, task blobs), ``events``, ``agents`` (what agents share: topics, inbox,
trace claims), ``logs``, ``registry`` (agents and nodes), ``fleet`` (deployments,
placements, gateway tokens, the secrets key), ``checkpoints`` (checkpoint KV and objects)."""

SERVICE_PARTS: dict[str, tuple[str, ...]] = {
    "registry": ("registry", "events"),
    "scheduler": ("tasks", "events", "agents", "fleet"),
    "supervisor": ("logs", "events"),
    "checkpoint": ("checkpoints", "events"),
    "gateway": ("events",),
}
"""The parts each service creates when it runs with its own credentials."""


def owned_parts(settings: BusSettings, owner: str) -> tuple[str, ...] | None:
    """The parts ``owner`` (a service name, ``agent`` or ``replica``) creates with ``settings``.

    None (every part) without credentials; with credentials, ``SERVICE_PARTS[owner]``
    (none for an agent or an unknown owner: it may create nothing). A ``replica`` (an
    agent a supervisor started) creates nothing: its supervisor made the contract
    before it started anything, and a replica's start stays off the JetStream API.
    """
    if owner == "replica":
        return ()
    if settings.creds_file is None:
        return None
    return SERVICE_PARTS.get(owner, ())


CLUSTER_REPLICAS = 3
"""Replicas on a cluster of three or more servers: quorum 2, one server may be lost
(https://docs.nats.io/running-a-nats-service/configuration/clustering/jetstream_clustering)."""


def cluster_size(bus: Bus) -> int:
    """Servers of the cluster ``bus`` is connected to; 1 without a cluster.

    From the server's INFO: ``connect_urls`` lists every server's client URL, its own
    included.
    """
    info = bus.nc._server_info or {}
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or ())))


def stream_replicas(bus: Bus) -> int:
    """Replicas of what the contract creates: ``settings.stream_replicas``.

    For ``auto``: ``CLUSTER_REPLICAS`` on a cluster of that many servers or more, else 1.
    """
    wanted = bus.settings.stream_replicas
    if wanted != "auto":
        return wanted
    return CLUSTER_REPLICAS if cluster_size(bus) >= CLUSTER_REPLICAS else 1


async def ensure_contract(bus: Bus, parts: Collection[str] | None = None) -> None:
    """Create the ``parts`` of the contract (None: all) that are missing.

    Raises:
        ValueError: an unknown part.
    """
    steps: dict[str, Callable[[Bus], Awaitable[None]]] = {
        "tasks": _tasks,
        "events": _events,
        "agents": _agents,
        "logs": _logs,
        "registry": _registry,
        "fleet": _fleet,
        "checkpoints": _checkpoints,
    }
    wanted = PARTS if parts is None else tuple(parts)
    if unknown := set(wanted) - set(steps):
        raise ValueError(f"unknown contract parts {sorted(unknown)}; parts are {PARTS}")
    for part in PARTS:
        if part in wanted:
            await steps[part](bus)


async def _tasks(bus: Bus) -> None:
    n, s = bus.names, bus.settings
    await _stream(
        bus,
        StreamConfig(
            name=n.tasks_stream,
            subjects=[n.tasks_all()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ),
    )
    # Full results stream: new reports are refused, none unapplied dropped (retried).
    await _stream(
        bus,
        limited_stream(
            n.results_stream,
            n.results_all(),
            s.results_max_age_s,
            s.results_max_bytes,
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            duplicate_window=120.0,
        ),
    )
    # Task records are republished once stored, for waiters (Client.wait): a core
    # subscriber of $KV.<bucket>.<key> would also hear writes the store refuses.
    records = RePublish(src=f"$KV.{n.tasks_bucket}.>", dest=n.task_records_all())
    await _kv(
        bus, KeyValueConfig(n.tasks_bucket, history=1, ttl=TASK_RECORD_TTL_S, republish=records)
    )
    await _republish(bus, f"KV_{n.tasks_bucket}", records)
    await _kv(bus, KeyValueConfig(n.leases_bucket, history=1, limit_marker_ttl=1.0))
    # Approval requests live as long as task records; the scheduler is their writer.
    await _kv(bus, KeyValueConfig(n.approvals_bucket, history=1, ttl=TASK_RECORD_TTL_S))
    await _obs(bus, n.blobs_bucket, ObjectStoreConfig(ttl=TASK_RECORD_TTL_S))


async def _events(bus: Bus) -> None:
    n, s = bus.names, bus.settings
    await _stream(
        bus, limited_stream(n.events_stream, n.events_all(), s.events_max_age_s, s.events_max_bytes)
    )


async def _agents(bus: Bus) -> None:
    n, s = bus.names, bus.settings
    await _stream(
        bus,
        limited_stream(
            n.topics_stream,
            n.topics_all(),
            s.topics_max_age_s,
            s.topics_max_bytes,
            duplicate_window=120.0,
        ),
    )
    # Inbox: WorkQueue, so a handled message leaves; an unread one when its TTL ends.
    await _stream(
        bus,
        limited_stream(
            n.inbox_stream,
            n.inbox_all(),
            s.inbox_max_age_s,
            s.inbox_max_bytes,
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            duplicate_window=120.0,
            allow_msg_ttl=True,
            allow_direct=True,
        ),
    )
    # Trace claims expire by per-message TTL (agentbus.traces); trace kinds make their
    # own counter streams on first use.
    await _kv(bus, KeyValueConfig(n.trace_claims_bucket, history=1, limit_marker_ttl=1.0))
    await _deny_rollup(bus, f"KV_{n.trace_claims_bucket}")


async def _logs(bus: Bus) -> None:
    n, s = bus.names, bus.settings
    await _stream(
        bus,
        limited_stream(
            n.logs_stream,
            n.logs_all(),
            s.logs_max_age_s,
            s.logs_max_bytes,
            max_msgs_per_subject=LOGS_MAX_MSGS_PER_AGENT,
        ),
    )


async def _registry(bus: Bus) -> None:
    n = bus.names
    for bucket in (n.agents_bucket, n.nodes_bucket):
        await _kv(bus, KeyValueConfig(bucket, history=1, ttl=REGISTRY_TTL_S, limit_marker_ttl=5.0))
        await _deny_rollup(bus, f"KV_{bucket}")


async def _fleet(bus: Bus) -> None:
    n = bus.names
    await _kv(bus, KeyValueConfig(n.deployments_bucket, history=5))
    # Gateway tokens (agentbus.auth.tokens), written by operators, read by the gateway.
    for bucket in (n.placements_bucket, n.tokens_bucket):
        await _kv(bus, KeyValueConfig(bucket, history=1))
    # The public key ``apply`` seals secret env values to (agentbus.fleet.secrets).
    await _kv(bus, KeyValueConfig(n.secrets_keys_bucket, history=5))


async def _checkpoints(bus: Bus) -> None:
    n = bus.names
    # Every version is its own key (history 1 suffices), committed by one create-only
    # record (agentbus_checkpoint.commit).
    await _kv(bus, KeyValueConfig(n.checkpoints_bucket, history=1))
    # No TTL: checkpoint data lives as long as its version (retention deletes it).
    await _obs(bus, n.checkpoint_blobs_bucket, ObjectStoreConfig())


def limited_stream(
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


async def _obs(bus: Bus, bucket: str, config: ObjectStoreConfig) -> None:
    """Create Object Store ``bucket`` if missing; it refuses rollups (``bus.objects``)."""
    try:
        bus._obs[bucket] = await bus.js.object_store(bucket)
    except nats.js.errors.NotFoundError:
        try:
            config.replicas = stream_replicas(bus)
            bus._obs[bucket] = await bus.js.create_object_store(bucket, config=config)
        except nats.js.errors.BadRequestError:  # created concurrently
            bus._obs[bucket] = await bus.js.object_store(bucket)
    await raise_replicas(bus, f"OBJ_{bucket}")
    await _deny_rollup(bus, f"OBJ_{bucket}")


async def _republish(bus: Bus, stream: str, republish: RePublish) -> None:
    """Set ``republish`` on ``stream`` if it differs (a bucket made by an older version)."""
    config = (await bus.js.stream_info(stream)).config
    current = config.republish
    if current is None or (current.src, current.dest) != (republish.src, republish.dest):
        config.republish = republish
        await bus.js.update_stream(config)


async def _deny_rollup(bus: Bus, stream: str) -> None:
    """Refuse ``Nats-Rollup`` headers on ``stream`` (a KV bucket or object store agents write).

    Subject permissions cannot look at headers: an agent allowed to write its own key
    or an object could otherwise purge the whole bucket with ``Nats-Rollup: all``. The
    KV buckets this guards keep one revision per key, so a delete marker does what a
    purge would; objects are written without rollups (``agentbus.bus.objects``).
    """
    config = (await bus.js.stream_info(stream)).config
    if config.allow_rollup_hdrs:
        config.allow_rollup_hdrs = False
        await bus.js.update_stream(config)


async def _stream(bus: Bus, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one's limits up to ``config``.

    Only the ``_LIMIT_FIELDS`` that ``config`` sets are compared and updated.
    """
    assert config.name is not None
    config.num_replicas = stream_replicas(bus)
    try:
        current = (await bus.js.stream_info(config.name)).config
    except nats.js.errors.NotFoundError:
        try:
            await bus.js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:  # created concurrently
            current = (await bus.js.stream_info(config.name)).config
    changed = {
        field: wanted
        for field in _LIMIT_FIELDS
        if (wanted := getattr(config, field)) is not None and getattr(current, field) != wanted
    }
    if changed:
        for field, wanted in changed.items():
            setattr(current, field, wanted)
        await bus.js.update_stream(current)
        logger.info(
            "stream limits updated",
            stream=config.name,
            **{f: str(v) for f, v in changed.items()},
        )
    await raise_replicas(bus, config.name, current=current)


async def _kv(bus: Bus, config: KeyValueConfig) -> None:
    try:
        bus._kv[config.bucket] = await bus.js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            config.direct = True
            config.replicas = stream_replicas(bus)
            bus._kv[config.bucket] = await bus.js.create_key_value(config)
            return
        except nats.js.errors.BadRequestError:
            bus._kv[config.bucket] = await bus.js.key_value(config.bucket)
    await raise_replicas(bus, f"KV_{config.bucket}")


async def raise_replicas(bus: Bus, stream: str, *, current: StreamConfig | None = None) -> bool:
    """Raise ``stream`` to ``stream_replicas(bus)`` replicas if it has fewer.

    A stream is never lowered here (an operator does that on purpose). A raise the
    cluster refuses (too few servers with JetStream, no quorum) or this identity may
    not make (the bucket is another service's) is logged as a warning, not raised: the
    stream keeps working with the replicas it has (``agentbus cluster`` shows it
    under-replicated).

    Returns:
        Whether ``stream`` now has at least the wanted replicas.
    """
    wanted = stream_replicas(bus)
    config = current or (await bus.js.stream_info(stream)).config
    have = config.num_replicas or 1
    if have >= wanted:
        return True
    config.num_replicas = wanted
    try:
        await bus.js.update_stream(config)
    except (nats.errors.Error, TimeoutError) as exc:
        # Refused (too few servers, no quorum), or unanswered: an identity that may
        # create this stream but not update it (a service and another's bucket) gets
        # a permissions violation, which nats-py reports apart, and a timeout here.
        logger.warning(
            "stream has fewer replicas than wanted and the cluster refused to raise them",
            stream=stream,
            replicas=have,
            wanted=wanted,
            error=str(exc),
        )
        return False
    logger.info("stream replicas raised", stream=stream, replicas=wanted, was=have)
    return True
