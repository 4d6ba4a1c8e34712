"""What one agent replica may do: its grant (from its deployment) and permissions.

``agent_permissions`` builds the allow-lists of a replica's user JWT from its
``AgentGrant``: its own subjects, consumers and keys only; ``docs/protocol.md``,
"Permissions", has the table and what it refuses. The building blocks and the
services' tables are in ``agentbus.auth.permissions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentbus.auth.permissions import (
    Permissions,
    inbox_prefix,
    kv_read,
    objects_read,
)
from agentbus.names import BANDS, Names


@dataclass(frozen=True, slots=True)
class AgentGrant:
    """What one agent replica may do, derived from its deployment.

    Attributes:
        agent_id: the replica's agent id.
        capabilities: the capabilities it serves (task consumers, results, asks).
        deployment: its deployment (shared topic consumers are named after it).
        publishes: event topics it may publish on (patterns allowed).
        subscriptions: subscription name -> ``"shared"`` or ``"each"`` (its topic
            consumers).
        trace_kinds: trace kinds it may deposit on, sense and claim.
        asks: ask capabilities it answers besides ``capabilities``.
    """

    agent_id: str
    capabilities: tuple[str, ...]
    deployment: str | None = None
    publishes: tuple[str, ...] = ()
    subscriptions: dict[str, str] = field(default_factory=dict)
    trace_kinds: tuple[str, ...] = ()
    asks: tuple[str, ...] = ()


def task_consumers(capability: str) -> list[str]:
    """The consumer names of every priority band of ``capability``."""
    return [Names.task_consumer(capability, band) for band in range(BANDS)]


def topic_consumers(names: Names, grant: AgentGrant, subscription: str, mode: str) -> list[str]:
    """The nine consumer names of one of ``grant``'s subscriptions (keyless + 8 keyed)."""
    from agentbus.names import TOPIC_PARTS

    owner = grant.deployment or grant.agent_id
    base = (
        f"topic-{owner}-{subscription}"
        if mode == "shared"
        else f"each-{grant.agent_id}-{subscription}"
    )
    return [base if part == "_" else f"{base}-{part}" for part in TOPIC_PARTS]


def agent_permissions(names: Names, grant: AgentGrant) -> Permissions:
    """The permissions of one agent replica: its own subjects and consumers only.

    See ``docs/protocol.md``, "Permissions", for the table and what it refuses.
    """
    n, p, me = names, names.prefix, grant.agent_id
    mine = inbox_prefix("agent", me)
    publish = [
        f"$KV.{n.agents_bucket}.{me}",  # heartbeat
        f"$JS.API.STREAM.INFO.KV_{n.agents_bucket}",
        f"$JS.API.STREAM.INFO.{n.tasks_stream}",  # queue depth, for idle probes
        f"{p}.events.*.*.{me}",  # its own events: <entity>.<kind>.<agent id> (errors too)
        f"{p}.checkpoint.*.{me}",  # its state; task progress is per capability (below)
        f"{p}.inbox.*.{me}",  # direct messages, sent as itself
        f"{p}.inbox.receipts.{me}.*",
        f"{p}.broadcast.*.{me}",
        f"$JS.API.CONSUMER.MSG.NEXT.{n.inbox_stream}.{n.inbox_consumer(me)}",
        f"$JS.ACK.{n.inbox_stream}.{n.inbox_consumer(me)}.>",
        f"$JS.API.CONSUMER.INFO.{n.inbox_stream}.*",
        f"$JS.API.DIRECT.GET.{n.inbox_stream}.{p}.inbox.receipts.>",
        f"$JS.API.DIRECT.GET.{n.inbox_stream}.{p}.inbox.*.{me}",  # the last it sent
        f"{p}.agents.ask.*",
        f"{p}.scheduler.submit",
        f"{p}.scheduler.submit_batch",
        f"{p}.scheduler.approval_request.{me}",  # asks as itself; deciding is not its
        *objects_read(n.blobs_bucket),
        f"$O.{n.blobs_bucket}.>",
        *objects_read(n.checkpoint_blobs_bucket),  # checkpoint data over the inline limit
        f"$O.{n.checkpoint_blobs_bucket}.>",
        *kv_read(n.trace_claims_bucket),
        f"$KV.{n.trace_claims_bucket}.>",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.NAMES",  # nats.js finds a stream by subject (Object Store reads)
        "$JS.API.INFO",
    ]
    subscribe = [
        f"{mine}.>",
        f"{p}.control.cancel",
        f"{p}.inbox.receipts.*.*",  # the receipt of a message it sent
        f"{p}.records.task.*",
        "$SRV.*",
        "$SRV.*.agentbus-agent",
        "$SRV.*.agentbus-agent.>",
    ]
    for cap in grant.capabilities:
        for consumer in task_consumers(cap):
            publish += [
                f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.{consumer}",
                f"$JS.API.CONSUMER.INFO.{n.tasks_stream}.{consumer}",
                f"$JS.ACK.{n.tasks_stream}.{consumer}.>",
                f"$JS.ACK.*.*.{n.tasks_stream}.{consumer}.>",
            ]
        publish += [
            f"{p}.results.{cap}.{me}",
            # A notice it cannot take is announced again; unheard, as a backlog notice.
            n.ready_subject(cap),
            n.backlog_subject(cap),
            f"{p}.checkpoint.*.{cap}",
        ]
        # Watch (read only) the approval requests of its capability's tasks.
        approvals = f"KV_{n.approvals_bucket}"
        publish += [
            f"$JS.API.CONSUMER.CREATE.{approvals}.*.$KV.{n.approvals_bucket}.{cap}.>",
            f"$JS.API.CONSUMER.DELETE.{approvals}.*",
        ]
        subscribe += [
            n.ready_subject(cap),
            n.backlog_subject(cap),
            n.broadcast_filter(cap),
            n.ask_subject(cap),
        ]
    for ask in grant.asks:
        subscribe.append(n.ask_subject(ask))
    for topic in grant.publishes:
        publish.append(
            f"{p}.topics.{topic}.*" if not topic.endswith(">") else f"{p}.topics.{topic}"
        )
    for subscription, mode in grant.subscriptions.items():
        for consumer in topic_consumers(n, grant, subscription, mode):
            publish += [
                f"$JS.API.CONSUMER.MSG.NEXT.{n.topics_stream}.{consumer}",
                f"$JS.API.CONSUMER.INFO.{n.topics_stream}.{consumer}",
                f"$JS.ACK.{n.topics_stream}.{consumer}.>",
                f"$JS.ACK.*.*.{n.topics_stream}.{consumer}.>",
            ]
    for kind in grant.trace_kinds:
        stream = n.trace_stream(kind)
        publish += [
            f"{p}.traces.{kind}.>",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}.*.{p}.traces.{kind}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
            f"$JS.FC.{stream}.>",
        ]
    return Permissions(
        publish=tuple(publish),
        subscribe=tuple(subscribe),
        inbox_prefix=mine,
        responses=True,
    )
