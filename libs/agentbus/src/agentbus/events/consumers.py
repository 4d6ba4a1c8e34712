"""The durable consumers of ``<P>_TOPICS``: who subscribes to what, and how far behind.

Read from the stream's consumer list, whoever created them. A subscription of a
deployment in shared mode has consumers named ``topic-<deployment>-<name>[-<part>]``
(``<part>``: ``_`` for keyless events, ``k<N>`` for one partition of keyed events).
Deployment names and subscription names may both hold ``-``, so a name is split at
the longest deployment name it starts with among the stored deployments; a name
matching none is split at its first ``-``.
"""

from __future__ import annotations

import re

import msgspec
import nats.js.errors
from nats.js.api import ConsumerInfo

from agentbus.bus import Bus
from agentbus.errors import UnavailableError

CONSUMER_PREFIX = "topic-"
_PART_RE = re.compile(r"^(?P<name>.+)-(?P<part>_|k\d+)$")


class TopicConsumer(msgspec.Struct, kw_only=True):
    """One durable consumer of ``<P>_TOPICS`` (``agentbus events subscriptions``).

    ``part``: ``_`` keyless events, ``k<N>`` one partition of keyed events, None
    when the name has no part. ``filters``: its filter subjects without the
    ``<p>.topics.`` prefix. ``pending``: events not yet delivered to it;
    ``ack_pending``: delivered, not yet acknowledged.
    """

    deployment: str
    subscription: str
    part: str | None
    consumer: str
    filters: list[str]
    pending: int
    ack_pending: int
    redelivered: int


def split_consumer_name(name: str, deployments: set[str]) -> tuple[str, str, str | None] | None:
    """``(deployment, subscription, part)`` of a consumer name, None if not ``topic-*``."""
    if not name.startswith(CONSUMER_PREFIX):
        return None
    rest = name[len(CONSUMER_PREFIX) :]
    known = [d for d in deployments if rest.startswith(f"{d}-") and len(rest) > len(d) + 1]
    if known:
        deployment = max(known, key=len)
    else:
        deployment = rest.partition("-")[0]
    tail = rest[len(deployment) + 1 :]
    if not deployment or not tail:
        return None
    match = _PART_RE.match(tail)
    if match:
        return deployment, match["name"], match["part"]
    return deployment, tail, None


def _filters(info: ConsumerInfo, prefix: str) -> list[str]:
    config = info.config
    subjects = list(config.filter_subjects or []) or (
        [config.filter_subject] if config.filter_subject else []
    )
    return [s.removeprefix(prefix) for s in subjects]


_PAGE = 256
"""Consumers per ``consumers_info`` page (the server's page size)."""


async def stream_consumers(bus: Bus, stream: str) -> list[ConsumerInfo]:
    """Every consumer of ``stream``, all pages.

    Raises:
        nats.js.errors.NotFoundError: no such stream.
    """
    found: list[ConsumerInfo] = []
    while True:
        page = await bus.js.consumers_info(stream, len(found))
        found.extend(page)
        if len(page) < _PAGE:
            return found


async def topic_consumers(bus: Bus) -> list[TopicConsumer]:
    """The ``topic-*`` durable consumers of ``<P>_TOPICS``, by deployment, name, part.

    Raises:
        UnavailableError: no ``<P>_TOPICS`` stream.
    """
    names = bus.names
    try:
        infos = await stream_consumers(bus, names.topics_stream)
    except nats.js.errors.NotFoundError as exc:
        raise UnavailableError(f"stream {names.topics_stream} does not exist") from exc
    try:
        deployments = set(await (await bus.kv(names.deployments_bucket)).keys())
    except (UnavailableError, nats.js.errors.NoKeysError):
        deployments = set()
    prefix = f"{names.prefix}.topics."
    found = []
    for info in infos:
        parts = split_consumer_name(info.name, deployments)
        if parts is None:
            continue
        deployment, subscription, part = parts
        found.append(
            TopicConsumer(
                deployment=deployment,
                subscription=subscription,
                part=part,
                consumer=info.name,
                filters=_filters(info, prefix),
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
            )
        )
    return sorted(found, key=lambda c: (c.deployment, c.subscription, c.part or ""))
