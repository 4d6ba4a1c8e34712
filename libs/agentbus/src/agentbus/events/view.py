"""Who listens to what: declared subscriptions joined with the live consumers.

``subscription_views`` reads the deployment specs (``Deployment.subscriptions``, from
fleet files) and every consumer of ``<P>_TOPICS`` (their metadata names the pattern,
mode, owner and subscription, ``agentbus.events.routes.consumer_plan``), and returns
one row per subscription: declared ones (with or without consumers yet) and live ones
nobody declared (an agent started by hand, or a declaration that is missing).
``agentbus ps`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import nats.js.errors
from nats.js.api import ConsumerInfo

from agentbus.client import Client
from agentbus.events.consumers import stream_consumers
from agentbus.messages import SubscriptionMode
from agentbus.names import replica_agent_id_pattern


class SubscriptionView(msgspec.Struct, frozen=True, kw_only=True):
    """One subscription as ``ps`` shows it.

    ``owner`` is the deployment (or, for an undeclared one, the owner its consumers
    name: a deployment, an agent name or an agent id). ``consumers`` counts its live
    durable consumers (9 per shared subscription, 9 per replica for ``each``);
    ``pending`` the events stored but not yet delivered to it, ``in_flight`` those
    delivered and not yet acked, summed over its consumers.
    """

    owner: str
    pattern: str
    mode: SubscriptionMode
    name: str | None
    start: str = "new"
    declared: bool = True
    consumers: int = 0
    pending: int = 0
    in_flight: int = 0


@dataclass
class _Live:
    owner: str
    pattern: str
    mode: SubscriptionMode
    name: str
    consumers: int = 0
    pending: int = 0
    in_flight: int = 0


async def topic_consumers(client: Client) -> list[ConsumerInfo]:
    """Every consumer of ``<P>_TOPICS`` (empty if the stream does not exist)."""
    try:
        return await stream_consumers(client.bus, client.names.topics_stream)
    except nats.js.errors.NotFoundError:
        return []


def _live(consumers: list[ConsumerInfo]) -> list[_Live]:
    groups: dict[tuple[str, str, str, str], _Live] = {}
    for c in consumers:
        meta = c.config.metadata or {}
        mode: SubscriptionMode
        if meta.get("agentbus_mode") == "shared":
            mode = "shared"
        elif meta.get("agentbus_mode") == "each":
            mode = "each"
        else:
            continue  # not made by agentbus.events
        key = (
            meta.get("agentbus_owner", ""),
            meta.get("agentbus_pattern", ""),
            mode,
            meta.get("agentbus_subscription", ""),
        )
        g = groups.setdefault(key, _Live(key[0], key[1], mode, key[3]))
        g.consumers += 1
        g.pending += c.num_pending or 0
        g.in_flight += c.num_ack_pending or 0
    return list(groups.values())


async def subscription_views(client: Client) -> list[SubscriptionView]:
    """Declared and live subscriptions, by owner, pattern and name."""
    deployments = await client.deployments()
    live = _live(await topic_consumers(client))
    rows: list[SubscriptionView] = []
    used: set[int] = set()
    for d in deployments.values():
        replicas = replica_agent_id_pattern(d.name)
        for s in d.subscriptions:
            mine = [
                i
                for i, g in enumerate(live)
                if g.pattern == s.pattern
                and g.mode == s.mode
                and (s.name is None or g.name == s.name)
                and (g.owner == d.name if s.mode == "shared" else replicas.fullmatch(g.owner))
            ]
            used.update(mine)
            rows.append(
                SubscriptionView(
                    owner=d.name,
                    pattern=s.pattern,
                    mode=s.mode,
                    name=s.name,
                    start=s.start,
                    consumers=sum(live[i].consumers for i in mine),
                    pending=sum(live[i].pending for i in mine),
                    in_flight=sum(live[i].in_flight for i in mine),
                )
            )
    for i, g in enumerate(live):
        if i not in used:
            rows.append(
                SubscriptionView(
                    owner=g.owner,
                    pattern=g.pattern,
                    mode=g.mode,
                    name=g.name,
                    declared=False,
                    consumers=g.consumers,
                    pending=g.pending,
                    in_flight=g.in_flight,
                )
            )
    rows.sort(key=lambda r: (r.owner, r.pattern, r.name or ""))
    return rows
