"""Who may publish and subscribe to what: the permission table of every identity.

Each identity on the bus (a service, an operator, one agent replica) is a NATS user
whose JWT carries allow-lists built here; the server refuses everything else. The
tables are ``docs/protocol.md``, "Permissions", in code.

JetStream calls are subjects too (``$JS.API.<verb>.<stream>...``), so access to a
stream is granted by stream name: ``stream_read`` (info, direct gets, consumers and
their pulls and acks) and ``stream_admin`` (create, update, purge); nobody but an
operator may delete a stream. An agent gets no stream-wide grant at all: only pulls
and acks on its own consumers, which its supervisor creates (``agentbus.auth.provision``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentbus.names import BANDS, Names

SERVICES = ("registry", "scheduler", "supervisor", "checkpoint", "gateway")
"""Service identities, each with its own table (``service_permissions``)."""
RESPONSES_MAX = 64
"""Replies one identity with ``responses`` may send to one request: the most ``nats.micro``
instances one connection serves (``CHECKPOINT_CONCURRENCY`` is at most 64)."""


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to.

    Attributes:
        publish: subjects (wildcards allowed) the identity may publish to.
        subscribe: subjects the identity may subscribe to.
        publish_deny: exceptions to ``publish``.
        subscribe_deny: exceptions to ``subscribe``.
        responses: may reply to any request it received (NATS ``resp``), as a service
            does; without it, only to ``publish`` subjects. Up to ``RESPONSES_MAX``
            replies per request: a ``$SRV.PING`` reaches every ``nats.micro`` instance of
            a connection (the checkpoint service runs several), and each answers.
        inbox_prefix: the identity's reply-subject prefix (``connect(inbox_prefix=)``):
            replies to its requests arrive under it and nobody else may subscribe there.
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    inbox_prefix: str
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    responses: bool = False

    def claims(self) -> dict[str, Any]:
        """The ``pub``/``sub``/``resp`` members of a NATS user JWT."""
        out: dict[str, Any] = {
            "pub": _rule(self.publish, self.publish_deny),
            "sub": _rule(self.subscribe, self.subscribe_deny),
            "subs": -1,
            "data": -1,
            "payload": -1,
        }
        if self.responses:
            out["resp"] = {"max": RESPONSES_MAX, "ttl": 0}
        return out


def _rule(allow: Iterable[str], deny: Iterable[str]) -> dict[str, list[str]]:
    rule: dict[str, list[str]] = {"allow": sorted(set(allow))}
    if deny:
        rule["deny"] = sorted(set(deny))
    return rule


def inbox_prefix(kind: str, name: str) -> str:
    """Reply prefix of identity ``name`` of ``kind`` (``svc``, ``agent``, ``user``)."""
    return f"_INBOX_{kind}_{name}"


# -- grants by stream ---------------------------------------------------------------


def stream_read(stream: str) -> list[str]:
    """Read a stream: info, message and direct gets, consumers, their pulls and acks."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.*.{stream}",  # ephemeral create, names, list
        f"$JS.API.CONSUMER.*.{stream}.>",  # create/info/delete of a named consumer
        # Not CONSUMER.*.*.<stream>.>: that also matches CREATE.<other stream>.<stream>.
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.ACK.*.*.{stream}.>",  # ack subjects, v2 format (server >= 2.14)
        f"$JS.FC.{stream}.>",
    ]


def stream_admin(stream: str) -> list[str]:
    """Create, update and purge a stream, and delete single messages."""
    return [
        *stream_read(stream),
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
    ]


def kv_read(bucket: str) -> list[str]:
    """Read and watch KV ``bucket``."""
    return stream_read(f"KV_{bucket}")


def kv_write(bucket: str) -> list[str]:
    """Create, read and write KV ``bucket`` (puts, deletes, purges of keys)."""
    return [*stream_admin(f"KV_{bucket}"), f"$KV.{bucket}.>"]


def objects_write(bucket: str) -> list[str]:
    """Create, read and write Object Store ``bucket``."""
    return [*stream_admin(f"OBJ_{bucket}"), f"$O.{bucket}.>"]


def objects_read(bucket: str) -> list[str]:
    """Read Object Store ``bucket``."""
    return stream_read(f"OBJ_{bucket}")


# -- services -------------------------------------------------------------------------


def _service_base(names: Names, service: str) -> tuple[list[str], list[str]]:
    """What every service does: serve its micro endpoints, answer pings, report errors."""
    p = names.prefix
    publish = [
        "$JS.API.INFO",
        f"{p}.events.error.{service}",
        *stream_read(names.events_stream),
        f"{p}.events.>",
        "$SRV.>",
    ]
    subscribe = [f"{p}.{service}.>", "$SRV.>"]
    return publish, subscribe


def service_permissions(names: Names, service: str, *, node_id: str | None = None) -> Permissions:
    """The permissions of service ``service`` (one of ``SERVICES``) on ``names``' fleet.

    ``node_id``: the supervisor's node (its request subjects carry it).

    Raises:
        ValueError: unknown service, or a supervisor without ``node_id``.
    """
    n, p = names, names.prefix
    publish, subscribe = _service_base(names, service)
    deny = ["$JS.API.STREAM.DELETE.>"]
    if service == "registry":
        publish += [*kv_write(n.agents_bucket), *kv_write(n.nodes_bucket)]
        publish += stream_admin(n.events_stream)
    elif service == "scheduler":
        for stream in (n.tasks_stream, n.results_stream, n.events_stream, n.topics_stream):
            publish += stream_admin(stream)
        publish += [*stream_admin(n.inbox_stream), *stream_admin(n.task_advisories_stream)]
        for bucket in (
            n.tasks_bucket,
            n.dead_tasks_bucket,
            n.leases_bucket,
            n.deployments_bucket,
            n.placements_bucket,
            n.trace_claims_bucket,
            n.approvals_bucket,
        ):
            publish += kv_write(bucket)
        # Creates, never writes: tokens are operators', the secrets key supervisors'.
        for bucket in (n.tokens_bucket, n.secrets_keys_bucket):
            publish += [f"$JS.API.STREAM.CREATE.KV_{bucket}", f"$JS.API.STREAM.INFO.KV_{bucket}"]
        publish += [*kv_read(n.agents_bucket), *kv_read(n.nodes_bucket)]
        publish += objects_write(n.blobs_bucket)
        publish += [f"{p}.tasks.>", f"{p}.control.>", f"{p}.records.task.>"]
        # Trace kinds of deployments (one stream per kind, named at deploy time).
        publish += ["$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.LIST"]
        subscribe += [f"{p}.control.>"]
    elif service == "supervisor":
        if node_id is None:
            raise ValueError("a supervisor's permissions need its node id")
        subscribe = [f"{p}.supervisor.{node_id}.>", "$SRV.>"]
        publish += [*kv_write(n.nodes_bucket), *kv_read(n.agents_bucket)]
        publish += [*kv_read(n.placements_bucket), *kv_read(n.deployments_bucket)]
        publish += kv_write(n.secrets_keys_bucket)  # publishes the secrets public key
        publish += [*stream_admin(n.logs_stream), f"{p}.logs.>"]
        # Provisioning the consumers of the replicas it starts (agentbus.auth.provision).
        for stream in (n.tasks_stream, n.topics_stream, n.inbox_stream):
            publish += stream_read(stream)
    elif service == "checkpoint":
        publish += [*kv_write(n.checkpoints_bucket), *objects_write(n.checkpoint_blobs_bucket)]
        publish += kv_write(n.leases_bucket)  # one retention sweep at a time (KvLease)
    elif service == "gateway":
        publish += [f"{p}.{svc}.>" for svc in ("scheduler", "registry", "checkpoint")]
        publish += [f"{p}.supervisor.*.status", f"{p}.topics.>", "$SRV.PING.>"]
        publish += [*stream_read(n.topics_stream), *kv_read(n.tasks_bucket)]
        publish += kv_read(n.tokens_bucket)
        publish += [*objects_read(n.blobs_bucket), *stream_read(n.logs_stream)]
        subscribe += [f"{p}.records.task.>"]
        publish += _gateway_dashboard_reads(n)
        deny += _others_consumers(n)
    else:
        raise ValueError(f"unknown service {service!r}; services are {', '.join(SERVICES)}")
    deny = ["$JS.API.STREAM.DELETE.>"]
    if service == "gateway":  # approval requests are agents' (it decides them)
        deny.append(f"{p}.scheduler.approval_request.>")
    identity = service if node_id is None else f"{service}-{node_id}"  # replies per node
    return Permissions(
        publish=tuple(publish),
        subscribe=(*subscribe, f"{inbox_prefix('svc', identity)}.>"),
        inbox_prefix=inbox_prefix("svc", identity),
        publish_deny=tuple(deny),
        responses=True,
    )


def _gateway_dashboard_reads(names: Names) -> list[str]:
    """The gateway's fleet KV, task consumer info (queue depth) and trace reads.

    Trace streams are named at run time: consumers may be made on any stream but only
    with a filter under ``<p>.traces.>``; pulls and deletes of any consumer name are
    allowed, and ``_others_consumers`` denies them on the agents' and services' streams.
    """
    n, p = names, names.prefix
    out = [f"$JS.API.CONSUMER.LIST.{n.tasks_stream}", f"$JS.API.CONSUMER.INFO.{n.tasks_stream}.*"]
    for bucket in (n.deployments_bucket, n.placements_bucket, n.nodes_bucket, n.agents_bucket):
        out += kv_read(bucket)
    out += ["$JS.API.STREAM.LIST", f"$JS.API.CONSUMER.CREATE.*.*.{p}.traces.>"]
    return [*out, "$JS.API.CONSUMER.MSG.NEXT.*.*", "$JS.API.CONSUMER.DELETE.*.*"]


def _others_consumers(n: Names) -> list[str]:
    """Pulls from and deletes of the consumers of agents and services (work streams)."""
    streams = (n.tasks_stream, n.results_stream, n.topics_stream, n.inbox_stream)
    return [
        f"$JS.API.CONSUMER.{verb}.{stream}.>"
        for stream in (*streams, n.task_advisories_stream)
        for verb in ("MSG.NEXT", "DELETE")
    ]


def operator_permissions(name: str) -> Permissions:
    """An operator (the ``agentbus`` CLI, tests): everything in the fleet's account."""
    return Permissions(
        publish=(">",),
        subscribe=(">",),
        inbox_prefix=inbox_prefix("user", name),
        responses=True,
    )


# -- agents ---------------------------------------------------------------------------


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
        publish += [f"{p}.results.{cap}.{me}", n.ready_subject(cap), f"{p}.checkpoint.*.{cap}"]
        # Watch (read only) the approval requests of its capability's tasks.
        approvals = f"KV_{n.approvals_bucket}"
        publish += [
            f"$JS.API.CONSUMER.CREATE.{approvals}.*.$KV.{n.approvals_bucket}.{cap}.>",
            f"$JS.API.CONSUMER.DELETE.{approvals}.*",
            f"$JS.FC.{approvals}.>",
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
