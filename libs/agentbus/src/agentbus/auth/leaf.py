"""The identity of a leaf-node link: what an edge site may send to and receive from the hub.

An edge site runs a leaf server (``agentbus.cluster.conf.leaf_server_conf``) for its
supervisor and agents; the leaf authenticates its local clients itself, with their own
identities, and joins the hub through one link that authenticates as a user of the
fleet account: ``leaf-<site>``. The hub applies that user's permissions to the link as
a whole (nats-server: subjects it may publish are what the leaf sends into the hub,
subjects it may subscribe to are what the hub sends out to the leaf), so they bound
everything the site does at the hub, whatever identity a client at the site holds:
an edge supervisor holds the account's signing key (it mints its replicas'
credentials), and a stolen key used at the site still cannot write through the link
what the table below refuses.

The table is the union of what an edge supervisor and its agents need
(``service_permissions(..., "supervisor")``, ``agent_permissions``), widened where
agent ids and capabilities are not known when the link's identity is minted, minus
what only hub services do: put tasks onto the task stream, publish task records and
cancels, write deployments, placements, task records, leases or API tokens, create or
delete streams but the supervisor's own, or read API tokens. The subscribe side is
wide (``>`` but the task and token subjects): inbox prefixes are one token per
identity, so no narrower pattern covers replicas not started yet. See
``docs/security.md``, "Edge sites".
"""

from __future__ import annotations

from pathlib import Path

from agentbus.auth.authority import AuthDir, Authority, write_secret
from agentbus.auth.permissions import (
    Permissions,
    inbox_prefix,
    kv_write,
    objects_read,
    stream_admin,
    stream_read,
)
from agentbus.names import Names, check_token

LEAF_IDENTITY = "leaf"
"""Name prefix of leaf-link identities: ``leaf-<site>``."""
HUB_SERVICES = ("scheduler", "registry", "checkpoint", "gateway")
"""Services that run at the hub only: their request subjects are never served at an edge."""


def leaf_permissions(names: Names) -> Permissions:
    """The permissions of a leaf link of ``names``' fleet (see the module docstring)."""
    n, p = names, names.prefix
    publish = [
        f"{p}.>",  # service requests, events, results, logs, inbox, topics, traces
        "$SRV.>",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.>",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.MSG.GET.>",
        "$JS.API.DIRECT.GET.>",
        "$JS.API.CONSUMER.>",  # the supervisor provisions its replicas' consumers
        "$JS.ACK.>",
        "$JS.FC.>",
        *stream_admin(n.logs_stream),
        *kv_write(n.nodes_bucket),
        *kv_write(n.secrets_keys_bucket),
        f"$KV.{n.agents_bucket}.>",  # agent heartbeats
        f"$KV.{n.trace_claims_bucket}.>",
        *objects_read(n.blobs_bucket),
        f"$O.{n.blobs_bucket}.>",
        f"$O.{n.checkpoint_blobs_bucket}.>",
    ]
    publish_deny = [
        f"{p}.tasks.>",  # tasks enter through the scheduler's submit
        f"{p}.records.>",
        n.cancel_subject(),
        *stream_read(f"KV_{n.tokens_bucket}"),  # API token hashes: the gateway's
    ]
    # The link's subscribe side also filters which of the hub's subscriptions the leaf
    # learns when it connects (nats-server: interest present at link time must pass
    # it), so it cannot refuse the subjects edge clients send requests on (JetStream's
    # API, KV and Object Store ingest, the services): only what no edge client sends to.
    subscribe_deny = [
        f"{p}.tasks.>",
        f"$KV.{n.tokens_bucket}.>",  # a token put, seen as a core message
    ]
    return Permissions(
        publish=tuple(publish),
        # Inbox prefixes are one token per identity (``_INBOX_agent_<id>``): no
        # narrower pattern covers the replicas a supervisor will start.
        subscribe=(">",),
        inbox_prefix=inbox_prefix("svc", LEAF_IDENTITY),
        publish_deny=tuple(publish_deny),
        subscribe_deny=tuple(subscribe_deny),
        responses=True,
    )


def leaf_creds(
    auth: AuthDir | Path | str, prefix: str, site: str, *, path: Path | None = None
) -> Path:
    """Mint the leaf-link identity ``leaf-<site>`` of fleet ``prefix``; write its creds.

    The file is ``creds/leaf-<site>.creds`` in ``auth`` unless ``path``; an existing
    one is replaced (mode 0600). It never expires: revoke it (``agentbus auth``
    revocation) to cut a site off.

    Returns:
        The creds file's path.

    Raises:
        ContractError: ``site`` is not a token, or the directory lacks the signing key.
    """
    check_token("site", site)
    auth = auth if isinstance(auth, AuthDir) else AuthDir(auth)
    name = f"{LEAF_IDENTITY}-{site}"
    creds = Authority(auth).mint(name, leaf_permissions(Names(prefix)))
    target = path or auth.creds(name)
    write_secret(target, creds.creds_text())
    return target
