"""What ``agentbus cluster`` shows: the NATS servers, each stream's replicas, the nodes.

Pure functions turn what the bus reports into rows: ``stream_health`` (one stream's
``StreamInfo``: leader, each replica current or lagging or offline, under-replicated,
lost quorum), ``server_health`` (the servers, merged from the connection's INFO, the
stream peers and, with system-account creds, the servers' ``VARZ``) and
``node_health`` (supervisor heartbeats). ``read_cluster_status`` gathers them on a
live bus (``agentbus.cluster.sysinfo`` asks the system account).

A replica is *current* when the stream leader reports it current, with no lag, and
heard from within ``STALE_ACTIVE_S`` (a Raft follower answers the leader's heartbeat
about every second; a killed server stays "current" in the leader's view for several
seconds, but its ``active`` age grows). A stream has *lost quorum* when it has no
leader or fewer than a majority of its replicas (the leader counted) are current.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import StreamInfo

from agentbus.kv.replay import replay
from agentbus.messages import NodeInfo, utcnow

if TYPE_CHECKING:
    from agentbus.bus import Bus

ReplicaState = Literal["leader", "current", "lagging", "offline"]
ServerState = Literal["ok", "lagging", "offline", "unknown"]
StreamKind = Literal["stream", "kv", "objects"]

STALE_ACTIVE_S = 3.0
"""A replica not heard from for longer than this is lagging (three Raft heartbeats)."""
NODE_LATE_S = 5.0
"""A node whose heartbeat is older than this is ``late`` (more than two missed beats)."""


class ReplicaHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One replica of a stream, as its leader reports it."""

    server: str
    state: ReplicaState
    lag: int = 0
    """Raft entries behind the leader."""
    active_s: float | None = None
    """Seconds since the leader last heard from it (None for the leader)."""


class StreamHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One stream, KV bucket or object store of the prefix."""

    stream: str
    """The JetStream stream name (``KV_<bucket>``, ``OBJ_<bucket>`` for buckets)."""
    kind: StreamKind
    name: str
    """The stream or bucket name."""
    wanted_replicas: int
    """What the contract creates with (``agentbus.bus.contract.stream_replicas``)."""
    replicas: int
    """What the stream is configured with."""
    leader: str | None
    peers: list[ReplicaHealth] = []
    under_replicated: bool = False
    """Fewer replicas configured (or placed) than wanted."""
    lost_quorum: bool = False
    """No leader, or fewer than a majority of the replicas current."""
    error: str = ""
    """Why its info could not be read (then ``lost_quorum``)."""


class ServerHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One nats-server of the cluster."""

    name: str
    state: ServerState
    url: str = ""
    """Its client URL, where known."""
    version: str = ""
    jetstream: bool | None = None
    meta_leader: bool = False
    """It leads the JetStream meta group (known with system-account creds)."""
    leads: int = 0
    """Streams of the prefix it leads."""


class NodeHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One supervisor node, from its heartbeat in ``<p>_nodes``."""

    node_id: str
    status: Literal["live", "late", "fenced"]
    """``fenced``: its supervisor cut itself off (``NodeInfo.fenced``); ``late``: its
    heartbeat is older than ``NODE_LATE_S``."""
    heartbeat_age_s: float
    hostname: str = ""
    runtime: str = ""
    labels: dict[str, str] = {}
    replicas: int = 0


class ServerPing(msgspec.Struct, frozen=True, kw_only=True):
    """A server's answer to ``$SYS.REQ.SERVER.PING.VARZ`` (system account)."""

    name: str
    url: str
    version: str
    jetstream: bool
    meta_leader: str | None
    meta_peers: list[str] = []
    """The other servers of the JetStream meta group, as this one knows them."""


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``agentbus cluster`` prints."""

    cluster: str | None
    """The cluster's name; None: one server, no cluster."""
    connected_server: str
    client_urls: list[str]
    """The client URLs the servers announce (the INFO ``connect_urls``)."""
    system_account: bool
    """Whether the servers were asked over the system account."""
    meta_leader: str | None
    servers: list[ServerHealth]
    streams: list[StreamHealth]
    nodes: list[NodeHealth]
    streams_error: str = ""
    """Why the streams could not be listed (no JetStream meta leader: an election)."""
    nodes_error: str = ""

    @property
    def problems(self) -> list[str]:
        """One line per stream under-replicated or without quorum, per server not ok."""
        out = [self.streams_error] if self.streams_error else []
        out += [f"{s.stream}: no quorum" for s in self.streams if s.lost_quorum]
        out += [
            f"{s.stream}: {s.replicas} of {s.wanted_replicas} replicas"
            for s in self.streams
            if s.under_replicated
        ]
        out += [f"server {s.name}: {s.state}" for s in self.servers if s.state != "ok"]
        return out


def stream_kind(stream: str, prefix: str) -> tuple[StreamKind, str] | None:
    """``(kind, name)`` of ``stream`` if it belongs to ``prefix``, else None.

    Streams of the prefix are ``<PREFIX>_*`` (upper case), KV buckets ``KV_<prefix>_*``
    and object stores ``OBJ_<prefix>_*`` (``agentbus.names``).
    """
    if stream.startswith(f"KV_{prefix}_"):
        return "kv", stream[3:]
    if stream.startswith(f"OBJ_{prefix}_"):
        return "objects", stream[4:]
    if stream.startswith(f"{prefix.upper()}_"):
        return "stream", stream
    return None


def stream_health(info: StreamInfo, *, prefix: str, wanted: int) -> StreamHealth:
    """The health of one stream from its ``StreamInfo`` (as ``js.stream_info`` returns).

    ``wanted``: the replicas the contract wants (``stream_replicas``).

    Raises:
        ValueError: ``info`` names no stream.
    """
    name = info.config.name
    if not name:
        raise ValueError("stream info without a name")
    kind, short = stream_kind(name, prefix) or ("stream", name)
    configured = info.config.num_replicas or 1
    cluster = info.cluster
    leader = cluster.leader if cluster else None
    peers: list[ReplicaHealth] = []
    if leader:
        peers.append(ReplicaHealth(server=leader, state="leader"))
    for p in (cluster.replicas if cluster else None) or []:
        active_s = None if p.active is None else p.active / 1e9
        lag = p.lag or 0
        state: ReplicaState
        if p.offline:
            state = "offline"
        elif not p.current or lag or (active_s is not None and active_s > STALE_ACTIVE_S):
            state = "lagging"
        else:
            state = "current"
        peers.append(ReplicaHealth(server=p.name or "?", state=state, lag=lag, active_s=active_s))
    current = sum(p.state in ("leader", "current") for p in peers)
    # One server without a cluster reports no peers: the stream is there, led locally.
    placed = len(peers) if cluster and cluster.replicas is not None else configured
    return StreamHealth(
        stream=name,
        kind=kind,
        name=short,
        wanted_replicas=wanted,
        replicas=configured,
        leader=leader,
        peers=peers,
        under_replicated=min(configured, placed) < wanted,
        lost_quorum=configured > 1 and (not leader or current < configured // 2 + 1),
    )


def unreadable_stream(stream: str, *, prefix: str, wanted: int, error: str) -> StreamHealth:
    """A stream whose info did not come back (no leader to answer): lost quorum."""
    kind, short = stream_kind(stream, prefix) or ("stream", stream)
    return StreamHealth(
        stream=stream,
        kind=kind,
        name=short,
        wanted_replicas=wanted,
        replicas=0,
        leader=None,
        lost_quorum=True,
        error=error,
    )


def server_health(
    streams: Sequence[StreamHealth],
    *,
    connected: str,
    connected_url: str,
    pings: Sequence[ServerPing] | None = None,
) -> list[ServerHealth]:
    """The servers, by name: those that answered ``pings`` and every stream peer.

    ``pings`` None: no system account (names come from the stream peers and the
    connected server only; a server is ``unknown`` when no stream places a replica on
    it). With ``pings``, a stream or meta-group peer that did not answer is
    ``offline``. Otherwise a server is ``offline`` or ``lagging`` when any of its
    replicas is.
    """
    worst: dict[str, ServerState] = {connected: "unknown"}
    leads: dict[str, int] = {}
    rank = {"unknown": 0, "ok": 1, "lagging": 2, "offline": 3}
    for s in streams:
        for p in s.peers:
            state: ServerState = (
                "ok" if p.state in ("leader", "current") else p.state  # type: ignore[assignment]
            )
            if rank[state] > rank[worst.get(p.server, "unknown")]:
                worst[p.server] = state
            if p.state == "leader":
                leads[p.server] = leads.get(p.server, 0) + 1
    answered = {p.name: p for p in pings or ()}
    meta = next((p.meta_leader for p in answered.values() if p.meta_leader), None)
    known = {peer for p in answered.values() for peer in p.meta_peers}
    out = []
    for name in sorted(set(worst) | set(answered) | known):
        ping = answered.get(name)
        state = worst.get(name, "unknown")
        if pings is not None:
            state = "offline" if ping is None else ("ok" if state == "unknown" else state)
        elif name == connected and state == "unknown":
            state = "ok"  # this connection reaches it
        out.append(
            ServerHealth(
                name=name,
                state=state,
                url=ping.url if ping else (connected_url if name == connected else ""),
                version=ping.version if ping else "",
                jetstream=ping.jetstream if ping else None,
                meta_leader=meta == name,
                leads=leads.get(name, 0),
            )
        )
    return out


def node_health(nodes: Iterable[NodeInfo], *, now: datetime) -> list[NodeHealth]:
    """Rows of the live nodes (their heartbeat entries), by node id."""
    out = []
    for n in sorted(nodes, key=lambda n: n.node_id):
        age_s = max(0.0, (now - n.heartbeat_at).total_seconds())
        out.append(
            NodeHealth(
                node_id=n.node_id,
                status="fenced" if n.fenced else "late" if age_s > NODE_LATE_S else "live",
                heartbeat_age_s=round(age_s, 1),
                hostname=n.hostname,
                runtime=n.runtime,
                labels=dict(n.labels),
                replicas=n.replicas,
            )
        )
    return out


async def read_cluster_status(
    bus: Bus, *, sys_creds: Path | None = None, timeout_s: float = 2.0
) -> ClusterStatus:
    """Read the cluster's state as ``bus``'s user sees it (plus the system account's).

    ``sys_creds``: a system-account user (``agentbus.cluster.sysinfo``); then every
    server is asked for its version, JetStream and meta leader, and a stream peer that
    does not answer is ``offline``. A stream whose info does not come back within
    ``timeout_s`` (no leader) is listed as lost quorum; when the streams cannot be
    listed at all (no JetStream meta leader), ``streams_error`` says why. Nothing is
    raised for a cluster in trouble: what cannot be read is reported in the result.
    """
    from agentbus.bus.contract import stream_replicas
    from agentbus.cluster.sysinfo import ping_servers

    prefix = bus.settings.prefix
    wanted = stream_replicas(bus)
    info = bus.nc._server_info or {}
    client_urls = [str(u) for u in info.get("connect_urls") or ()]
    streams: list[StreamHealth] = []
    try:
        names, streams_error = await _stream_names(bus, prefix, timeout_s), ""
    except (nats.errors.Error, TimeoutError) as exc:  # e.g. no meta leader (an election)
        names, streams_error = [], f"streams not listed: {type(exc).__name__}: {exc}"
    for name in names:
        try:
            si = await bus.js.stream_info(name)
            streams.append(stream_health(si, prefix=prefix, wanted=wanted))
        except (nats.errors.Error, TimeoutError) as exc:
            err = f"{type(exc).__name__}: {exc}"
            streams.append(unreadable_stream(name, prefix=prefix, wanted=wanted, error=err))
    pings = None
    if sys_creds is not None:
        pings = await ping_servers(bus.settings, sys_creds, expected=max(1, len(client_urls)))
    connected = str(info.get("server_name") or "?")
    url = bus.nc.connected_url
    connected_url = f"{url.scheme}://{url.hostname}:{url.port}" if url else ""
    try:
        kv = await bus.kv(bus.names.nodes_bucket)
        nodes = node_health(
            (await replay(kv, NodeInfo, timeout_s=timeout_s)).values(), now=utcnow()
        )
        nodes_error = ""
    except (nats.errors.Error, TimeoutError) as exc:
        nodes, nodes_error = [], f"{type(exc).__name__}: {exc}"
    servers = server_health(streams, connected=connected, connected_url=connected_url, pings=pings)
    return ClusterStatus(
        cluster=info.get("cluster") or None,
        connected_server=connected,
        client_urls=client_urls,
        system_account=pings is not None,
        meta_leader=next((s.name for s in servers if s.meta_leader), None),
        servers=servers,
        streams=streams,
        nodes=nodes,
        streams_error=streams_error,
        nodes_error=nodes_error,
    )


async def _stream_names(bus: Bus, prefix: str, timeout_s: float) -> list[str]:
    """Names of the prefix's streams (``$JS.API.STREAM.NAMES``: listed even leaderless)."""
    out: list[str] = []
    offset = 0
    while True:
        reply = await bus.nc.request(
            f"{bus.js._prefix}.STREAM.NAMES",
            json.dumps({"offset": offset}).encode(),
            timeout=timeout_s,
        )
        body = json.loads(reply.data)
        if "error" in body:
            raise nats.js.errors.APIError.from_error(body["error"])
        page = body.get("streams") or []
        out += [s for s in page if stream_kind(s, prefix) is not None]
        offset += len(page)
        if not page or offset >= int(body.get("total", 0)):
            return sorted(out)
