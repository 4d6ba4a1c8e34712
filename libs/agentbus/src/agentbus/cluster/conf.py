"""nats-server configuration text for a server of a cluster and for a leaf node.

Pure functions: they return the text of one configuration file (nats-server takes a
single ``-c``), to which the caller adds the auth lines
(``agentbus.auth.authority.server_conf_text``) and a TLS block if any. The cluster is
nats-server's own (routes, Raft-replicated JetStream); see ``docs/operations.md``,
"Many machines", and nats-server's reference at
https://docs.nats.io/running-a-nats-service/configuration/clustering.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

CLUSTER_NAME = "agentbus"
"""Default cluster name: every server of one cluster must agree on it."""
PING_INTERVAL_S = 5.0
"""Seconds between a server's pings on each connection (nats-server's default: 2 min).
A cut link stalls TCP without a reset: with the default a server would go on routing
to a partitioned peer (and holding its clients) for minutes; with this and
``PING_MAX`` it drops the connection after 10-15 s."""
PING_MAX = 2
"""Unanswered pings before a server closes the connection."""


@dataclass(frozen=True)
class ServerAddress:
    """Where one server of a cluster listens.

    Attributes:
        name: the server's unique ``server_name`` (also its Raft peer name).
        host: address clients, routes and leaf nodes reach it on.
        client_port: port for clients.
        cluster_port: port for routes from the other servers.
        leafnode_port: port for leaf nodes (0: no leaf-node listener).
    """

    name: str
    host: str
    client_port: int
    cluster_port: int
    leafnode_port: int = 0

    @property
    def client_url(self) -> str:
        """``nats://host:client_port``."""
        return f"nats://{self.host}:{self.client_port}"

    @property
    def route_url(self) -> str:
        """``nats://host:cluster_port``: what the other servers route to."""
        return f"nats://{self.host}:{self.cluster_port}"

    @property
    def leafnode_url(self) -> str:
        """``nats://host:leafnode_port``: what a leaf node's remote names."""
        return f"nats://{self.host}:{self.leafnode_port}"


@dataclass(frozen=True)
class ClusterSpec:
    """The servers of one cluster, in order; ``name`` is the cluster's name."""

    servers: tuple[ServerAddress, ...]
    name: str = CLUSTER_NAME
    listen_host: str | None = None
    """Address every server binds to (default: its own ``host``); ``0.0.0.0`` in
    containers, where the advertised host is the container's name."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def client_urls(self) -> str:
        """The comma-separated client URLs of every server (``AGENTBUS_NATS_URL``)."""
        return ",".join(s.client_url for s in self.servers)

    def server(self, name: str) -> ServerAddress:
        """The server named ``name``.

        Raises:
            KeyError: no such server in the spec.
        """
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"no server {name!r} in cluster {self.name!r}")


def cluster_server_conf(
    spec: ClusterSpec,
    name: str,
    *,
    store_dir: str,
    ping_interval_s: float = PING_INTERVAL_S,
    ping_max: int = PING_MAX,
) -> str:
    """The configuration of server ``name`` of ``spec``.

    Listeners, routes to every other server, JetStream in ``store_dir``. A server with
    a leaf-node listener also needs ``leafnode_jetstream_conf`` for leaves to reach
    its JetStream (the caller adds it, with the auth lines).

    Raises:
        KeyError: ``name`` is not a server of ``spec``.
    """
    me = spec.server(name)
    bind = spec.listen_host or me.host
    routes = ", ".join(json.dumps(s.route_url) for s in spec.servers if s.name != name)
    lines = [
        f"server_name: {json.dumps(name)}",
        f"listen: {json.dumps(f'{bind}:{me.client_port}')}",
        f'ping_interval: "{ping_interval_s:g}s"',
        f"ping_max: {ping_max}",
        "jetstream {",
        f"  store_dir: {json.dumps(store_dir)}",
        # JetStream reserves a stream's max_bytes up front (accounting only).
        "  max_file_store: 64PB",
        "}",
        "cluster {",
        f"  name: {json.dumps(spec.name)}",
        f"  listen: {json.dumps(f'{bind}:{me.cluster_port}')}",
        f"  advertise: {json.dumps(f'{me.host}:{me.cluster_port}')}",
        f"  routes: [{routes}]",
        # Peers announce each other; a removed server is not dialled forever.
        "  no_advertise: false",
        "}",
    ]
    if me.leafnode_port:
        lines += [
            "leafnodes {",
            f"  listen: {json.dumps(f'{bind}:{me.leafnode_port}')}",
            f"  advertise: {json.dumps(f'{me.host}:{me.leafnode_port}')}",
            "}",
        ]
    return "\n".join(lines) + "\n"


GLOBAL_ACCOUNT = "$G"
"""nats-server's account of clients when auth is off."""


def leafnode_jetstream_conf(account: str | None) -> str:
    """The line that lets ``account``'s JetStream traffic cross leaf-node links.

    nats-server denies ``$JS.API.>``, ``$KV.>`` and ``$OBJ.>`` on a leaf-node link of an
    account unless the system account is shared across it (JetStream "extension") or
    the account's default JetStream domain is set to the empty domain: then the link
    carries them like any subject, within the link user's permissions, and a leaf
    without JetStream of its own reaches the hub's. Both ends need the line: every
    hub server with a leaf-node listener and every leaf. (nats-server logs that the
    option is a compatibility measure; ``docs/operations.md``, "Edge sites", says
    what to do if a release drops it.)

    ``account``: the fleet account's public key (``A...``); None: auth is off (the
    global account ``$G``).
    """
    key = account or GLOBAL_ACCOUNT
    return f'default_js_domain: {{ {json.dumps(key)}: "" }}\n'


def leaf_server_conf(
    name: str,
    *,
    listen: str,
    hub_urls: Sequence[str],
    credentials: str | None = None,
    account: str | None = None,
) -> str:
    """The configuration of a leaf node, joined to the hub through one link.

    A leaf node is a local server for the agents and supervisor of an edge site; it
    authenticates them itself (with auth on, add ``server_conf_text`` of the fleet's
    auth directory, with the leaf's own resolver directory).

    The leaf runs no JetStream of its own: JetStream API requests, KV and Object Store
    writes, task pulls and acks cross the link to the hub's streams
    (``leafnode_jetstream_conf``, included here; the hub's servers need it too). While
    the link is down, work waits (nothing is stored on the edge that the hub would not
    know of) and resumes when it is back.

    ``listen``: ``host:port`` for local clients. ``hub_urls``: leaf-node URLs of the
    hub's servers (``nats://host:leafnode_port``). ``credentials``: a ``.creds`` file
    the link authenticates with (the site's ``leaf-<site>`` identity,
    ``agentbus.auth.leaf``). ``account``: the fleet account's public key, which the
    link binds to locally (None with auth off).
    """
    urls = ", ".join(json.dumps(u) for u in hub_urls)
    remote = [f"urls: [{urls}]"]
    if credentials:
        remote.append(f"credentials: {json.dumps(credentials)}")
    if account:
        remote.append(f"account: {json.dumps(account)}")
    return (
        f"server_name: {json.dumps(name)}\n"
        f"listen: {json.dumps(listen)}\n"
        # The link's pings: a cut link is noticed and redialled within 10-15 s.
        f'ping_interval: "{PING_INTERVAL_S:g}s"\n'
        f"ping_max: {PING_MAX}\n" + leafnode_jetstream_conf(account) + "leafnodes {\n"
        '  reconnect: "1s"\n'
        f"  remotes: [ {{ {', '.join(remote)} }} ]\n"
        "}\n"
    )
