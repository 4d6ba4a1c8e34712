"""``agentbus ps|logs|nodes|agents|ping``: look at the fleet.

``ps`` and ``nodes`` gather their rows with ``agentbus.fleet.view``; ``logs`` reads
the logs stream with ``agentbus.fleet.logs``. ``--json`` prints the rows as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import datetime
from typing import Annotated

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from agentbus.cli.common import (
    JsonFlag,
    NatsUrl,
    Prefix,
    age,
    console,
    fail,
    print_json,
    run,
    token,
    with_client,
)
from agentbus.cli.connect import resolve_settings
from agentbus.client import Client
from agentbus.embedded.processes import ping_services
from agentbus.errors import NotFoundError
from agentbus.events.view import SubscriptionView, subscription_views
from agentbus.fleet.logs import read_logs, since_time
from agentbus.fleet.view import FleetView, ReplicaView, fleet_view, node_views
from agentbus.messages import LogLine, utcnow
from agentbus.names import replica_agent_id_pattern
from agentbus.units import format_duration_s, format_size_bytes

_STATE_STYLE = {
    "running": "green",
    "starting": "cyan",
    "pending": "cyan",
    "backoff": "yellow",
    "stopping": "yellow",
    "unplaced": "yellow",
    "crash-loop": "bold red",
    "failed": "red",
    "unknown": "red",
    "exited": "dim",
}


# Identifiers are never wrapped or cut: scripts and tests read them from the table.
_IDS = frozenset({"node", "agent", "replica"})


commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""


@commands.command()
def ps(
    name: Annotated[str | None, typer.Argument(help="Only this deployment.")] = None,
    subscriptions: Annotated[
        bool,
        typer.Option("--subscriptions", "-s", help="List event subscriptions, not replicas."),
    ] = False,
    json_out: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List replicas: node, state (crash-loop too), restarts, uptime, last exit.

    Then the event subscriptions (who listens to what); ``--subscriptions`` lists only
    those (with ``--json``: as JSON).
    """
    if name is not None:
        token("deployment name", name)

    async def gather(c: Client) -> tuple[FleetView | None, list[SubscriptionView]]:
        view = None if subscriptions else await fleet_view(c, name)
        subs = await subscription_views(c)
        return view, [s for s in subs if name is None or _owned_by(s, name)]

    view, subs = run(with_client(nats_url, prefix, gather))
    if view is None:
        if json_out:
            print_json(msgspec.json.encode(subs))
        else:
            print_subscriptions(subs)
        return
    if json_out:
        print_json(msgspec.json.encode(view.replicas))
        return
    running = sum(r.state == "running" for r in view.replicas if r.desired)
    desired = sum(r.desired for r in view.replicas)
    table = Table(title=f"{running}/{desired} replicas running")
    for col in ("replica", "node", "state", "agent", "restarts", "uptime", "exit", "reason"):
        table.add_column(
            col, justify="right" if col in ("restarts", "exit") else "left", no_wrap=col in _IDS
        )
    for r in view.replicas:
        style = _STATE_STYLE.get(r.state, "")
        state = f"[{style}]{r.state}[/{style}]" if style else r.state
        label = f"{r.deployment}/{r.replica}" + ("" if r.desired else " [dim](extra)[/dim]")
        table.add_row(
            label,
            r.node_id or "-",
            state,
            r.agent or "-",
            str(r.restarts),
            _uptime(r),
            "-" if r.exit_code is None else str(r.exit_code),
            escape(_reason(r)),
        )
    console.print(table)
    for node in view.unreachable:
        console.print(f"[yellow]node {node} does not answer its status request[/yellow]")
    if subs:
        print_subscriptions(subs)


def _owned_by(s: SubscriptionView, deployment: str) -> bool:
    return s.owner == deployment or bool(replica_agent_id_pattern(deployment).fullmatch(s.owner))


def print_subscriptions(subs: list[SubscriptionView]) -> None:
    """Print event subscriptions as a table (``agentbus ps``)."""
    table = Table(title=f"{len(subs)} event subscriptions")
    for col in ("owner", "pattern", "mode", "name", "start", "consumers", "pending", "in flight"):
        numeric = col in ("consumers", "pending", "in flight")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col == "owner")
    for s in subs:
        owner = s.owner + ("" if s.declared else " [dim](undeclared)[/dim]")
        table.add_row(
            owner,
            escape(s.pattern),
            s.mode,
            s.name or "-",
            s.start,
            str(s.consumers),
            str(s.pending),
            str(s.in_flight),
        )
    console.print(table)


def _uptime(r: ReplicaView) -> str:
    if r.state != "running" or r.started_at is None:
        return "-"
    return format_duration_s((utcnow() - r.started_at).total_seconds())


def _reason(r: ReplicaView) -> str:
    if r.state == "backoff" and r.backoff_s is not None:
        return f"restart in {r.backoff_s:.1f} s" + (f" ({r.reason})" if r.reason else "")
    return r.reason


@commands.command()
def logs(
    target: Annotated[str, typer.Argument(metavar="NAME[/REPLICA]", help="What to show.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(help="Only lines since a duration ago (10m) or a time (RFC 3339)."),
    ] = None,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", "-t", help="Prefix each line with its time.")
    ] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print a deployment's (or one replica's) output; stderr lines go to stderr."""
    name, _, index = target.partition("/")
    token("deployment name", name)
    if index and not index.isdigit():
        raise fail(f"{target!r}: expected NAME or NAME/REPLICA (a replica number)", 2)
    replica = int(index) if index else None
    try:
        start = since_time(since) if since is not None else None
    except ValueError as exc:
        raise fail(f"--since: {exc}", 2) from None

    async def go(client: Client) -> None:
        exists = name in await client.deployments()
        if follow and not exists:
            raise NotFoundError(f"deployment {name!r} not found")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
        printed = 0
        async for line in read_logs(
            client.bus, name, replica, follow=follow, since=start, stop=stop
        ):
            _write(line, prefix=replica is None, timestamps=timestamps)
            printed += 1
        if not printed and not exists:
            raise NotFoundError(f"deployment {name!r} not found and no logs of it retained")

    run(with_client(nats_url, prefix, go))


def _write(line: LogLine, *, prefix: bool, timestamps: bool) -> None:
    head = f"{_rfc3339(line.at)} " if timestamps else ""
    if prefix:
        head += f"{line.agent_id} | "
    out = sys.stderr if line.stream == "stderr" else sys.stdout
    out.write(f"{head}{line.line}\n")
    out.flush()


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@commands.command()
def nodes(json_out: JsonFlag = False, nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """List live nodes: labels, replicas running/capacity and placed, declared CPU/memory."""
    found = run(with_client(nats_url, prefix, node_views))
    if json_out:
        print_json(msgspec.json.encode(found))
        return
    table = Table(title=f"{len(found)} nodes")
    for col in (
        "node",
        "runtime",
        "labels",
        "replicas",
        "placed",
        "cpus",
        "memory",
        "host",
        "seen",
    ):
        table.add_column(col, no_wrap=col in _IDS)
    for v in found:
        n = v.node
        labels = ",".join(f"{k}={val}" for k, val in sorted(n.labels.items()))
        replicas = f"{n.replicas}/{n.capacity_replicas}"
        cpus = f"{v.cpus:g}/{n.capacity_cpus:g}" if n.capacity_cpus else f"{v.cpus:g}/-"
        memory = (
            format_size_bytes(v.memory_bytes)
            + "/"
            + (format_size_bytes(n.capacity_memory_bytes) if n.capacity_memory_bytes else "-")
        )
        table.add_row(
            n.node_id,
            n.runtime,
            escape(labels) or "-",
            replicas,
            str(v.placed),
            cpus,
            memory,
            n.hostname,
            age(n.heartbeat_at),
        )
    console.print(table)


@commands.command()
def agents(
    capability: Annotated[str | None, typer.Option(help="Only agents with it.")] = None,
    json_out: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List live agents."""
    found = run(with_client(nats_url, prefix, lambda c: c.agents(capability)))
    if json_out:
        print_json(msgspec.json.encode(found))
        return
    table = Table(title=f"{len(found)} agents")
    for col in ("agent", "name", "capabilities", "node", "deployment", "status", "load", "seen"):
        table.add_column(col, no_wrap=col in _IDS)
    for a in found:
        replica = f"{a.deployment}/{a.replica}" if a.deployment else "-"
        load = f"{a.in_flight}/{a.max_concurrency}"
        caps = ",".join(a.capabilities)
        table.add_row(
            a.agent_id, a.name, caps, a.node_id or "-", replica, a.status, load, age(a.heartbeat_at)
        )
    console.print(table)


@commands.command()
def ping(nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """List the services that answer $SRV.PING (exit 1 if one of the five is missing)."""
    settings = resolve_settings(nats_url, prefix)
    names = run(
        with_client(nats_url, prefix, lambda c: ping_services(c.bus.nc, prefix=settings.prefix))
    )
    expected = {"registry", "scheduler", "supervisor", "checkpoint", "gateway"}
    for name in sorted(names | expected):
        console.print(f"{name:<12} {'ok' if name in names else '[red]missing[/red]'}")
    if not expected <= names:
        raise typer.Exit(1)
