"""``agentbus cluster``: the NATS servers, each stream's replicas, the supervisor nodes.

Reads ``agentbus.cluster.status``. With the system account's creds (``--sys-creds``,
default ``sys.creds`` beside the operator creds of ``AGENTBUS_CREDS_FILE``) every
server is asked for its version and the JetStream meta leader, and a server that does
not answer is offline; without them the servers are the ones the streams place
replicas on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from agentbus.cli.common import (
    JsonFlag,
    NatsUrl,
    Prefix,
    console,
    print_json,
    run,
    with_client,
)
from agentbus.cli.connect import resolve_settings
from agentbus.client import Client
from agentbus.cluster.status import ClusterStatus, ReplicaHealth, StreamHealth, read_cluster_status
from agentbus.cluster.sysinfo import system_creds_beside

_STATE_STYLE = {
    "ok": "green",
    "leader": "bold green",
    "current": "green",
    "live": "green",
    "lagging": "yellow",
    "late": "yellow",
    "fenced": "bold red",
    "offline": "bold red",
    "unknown": "dim",
}


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/{style}]" if style else state


commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""


@commands.command()
def cluster(
    sys_creds: Annotated[
        Path | None,
        typer.Option(
            "--sys-creds",
            envvar="AGENTBUS_SYS_CREDS_FILE",
            help="System-account creds (default: sys.creds beside AGENTBUS_CREDS_FILE).",
        ),
    ] = None,
    json_out: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Show the NATS servers, each stream's leader and replicas, and the nodes.

    Flags streams with fewer replicas than wanted (AGENTBUS_STREAM_REPLICAS) and
    streams without quorum (no leader, or fewer than a majority of replicas current).
    """
    settings = resolve_settings(nats_url, prefix)
    creds = sys_creds or system_creds_beside(settings.creds_file)

    async def read(client: Client) -> ClusterStatus:
        return await read_cluster_status(client.bus, sys_creds=creds)

    status = run(with_client(nats_url, prefix, read))
    if json_out:
        print_json(msgspec.json.encode(status))
        return
    print_status(status)


def print_status(status: ClusterStatus) -> None:
    """Print ``status`` as a heading and three tables (servers, streams, nodes)."""
    if status.cluster is None:
        console.print(f"no cluster: one server, {escape(status.connected_server)}", highlight=False)
    else:
        how = "system account" if status.system_account else "as seen by this account"
        console.print(
            f"cluster {escape(status.cluster)}: {len(status.servers)} servers, meta leader "
            f"{status.meta_leader or '?'} ({how})",
            highlight=False,
        )
    servers = Table(title="servers")
    for col in ("server", "state", "url", "version", "jetstream", "meta", "leads"):
        servers.add_column(col, no_wrap=col == "server")
    for s in status.servers:
        js = "-" if s.jetstream is None else ("yes" if s.jetstream else "no")
        servers.add_row(
            s.name,
            _styled(s.state),
            s.url or "-",
            s.version or "-",
            js,
            "leader" if s.meta_leader else "",
            str(s.leads),
        )
    console.print(servers)
    streams = Table(title=f"{len(status.streams)} streams, buckets and object stores")
    for col in ("stream", "kind", "replicas", "leader", "peers", "flags"):
        streams.add_column(col, no_wrap=col in ("stream", "leader"))
    for st in status.streams:
        streams.add_row(
            st.stream,
            st.kind,
            f"{st.replicas}/{st.wanted_replicas}",
            st.leader or "[bold red]none[/bold red]",
            ", ".join(_peer(p) for p in st.peers) or escape(st.error) or "-",
            _flags(st),
        )
    console.print(streams)
    if status.streams_error:
        console.print(f"[bold red]{escape(status.streams_error)}[/bold red]")
    nodes = Table(title=f"{len(status.nodes)} nodes")
    for col in ("node", "status", "host", "runtime", "replicas", "seen"):
        nodes.add_column(col, no_wrap=col == "node")
    for n in status.nodes:
        nodes.add_row(
            n.node_id,
            _styled(n.status),
            n.hostname or "-",
            n.runtime or "-",
            str(n.replicas),
            f"{n.heartbeat_age_s:.1f} s",
        )
    console.print(nodes)
    if status.nodes_error:
        console.print(f"[yellow]nodes not read: {escape(status.nodes_error)}[/yellow]")


def _peer(p: ReplicaHealth) -> str:
    text = f"{p.server} {_styled(p.state)}"
    if p.lag:
        text += f" lag {p.lag}"
    if p.state in ("lagging", "offline") and p.active_s is not None:
        text += f" {p.active_s:.1f} s"
    return text


def _flags(st: StreamHealth) -> str:
    flags = []
    if st.lost_quorum:
        flags.append("[bold red]lost quorum[/bold red]")
    if st.under_replicated:
        flags.append("[yellow]under-replicated[/yellow]")
    return " ".join(flags) or "[green]ok[/green]"
