"""``agentbus agents|nodes|ping|deploy|undeploy``: the fleet."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from rich.table import Table

from agentbus.cli.common import (
    NatsUrl,
    Prefix,
    age,
    app,
    console,
    fail,
    run,
    token,
    with_client,
)
from agentbus.cli_connect import resolve_settings
from agentbus.embedded import ping_services
from agentbus.messages import Deployment, RestartPolicy


@app.command()
def agents(
    capability: Annotated[str | None, typer.Option(help="Only agents with it.")] = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List live agents."""
    found = run(with_client(nats_url, prefix, lambda c: c.agents(capability)))
    table = Table(title=f"{len(found)} agents")
    for col in ("agent", "name", "capabilities", "node", "deployment", "status", "load", "seen"):
        table.add_column(col)
    for a in found:
        replica = f"{a.deployment}/{a.replica}" if a.deployment else "-"
        load = f"{a.in_flight}/{a.max_concurrency}"
        caps = ",".join(a.capabilities)
        table.add_row(a.agent_id, a.name, caps, a.node_id or "-", replica, a.status, load,
                      age(a.heartbeat_at))  # fmt: skip
    console.print(table)


@app.command()
def nodes(nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """List live nodes (one supervisor each)."""
    found = run(with_client(nats_url, prefix, lambda c: c.nodes()))
    table = Table(title=f"{len(found)} nodes")
    for col in ("node", "runtime", "replicas", "labels", "host", "seen"):
        table.add_column(col)
    for n in found:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
        table.add_row(n.node_id, n.runtime, f"{n.replicas}/{n.capacity_replicas}", labels,
                      n.hostname, age(n.heartbeat_at))  # fmt: skip
    console.print(table)


@app.command()
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


@app.command()
def deploy(
    name: Annotated[str, typer.Argument(help="Deployment name (a token).")],
    image: Annotated[str | None, typer.Option(help="Image (docker runtime).")] = None,
    command: Annotated[
        str | None, typer.Option(help="Command line (process runtime), shell-quoted.")
    ] = None,
    image_command: Annotated[
        str | None, typer.Option(help="Overrides the image's CMD (docker), shell-quoted.")
    ] = None,
    replicas: Annotated[int, typer.Option(min=0, max=1000)] = 1,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Repeatable.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE.")] = None,
    max_concurrency: Annotated[int, typer.Option(min=1)] = 1,
    restart_policy: Annotated[str, typer.Option(help="always|on-failure|never")] = "always",
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Create or update a deployment and print its placements."""
    if not image and not command:
        raise fail("give --image, --command or both", 2)
    if restart_policy not in ("always", "on-failure", "never"):
        raise fail(f"--restart-policy {restart_policy!r}: use always, on-failure or never", 2)
    pairs = [e.partition("=") for e in env or []]
    if bad := [k for k, sep, _ in pairs if not sep or not k]:
        raise fail(f"--env {bad[0]!r}: use KEY=VALUE", 2)
    token("deployment name", name)
    for cap in capability or []:
        token("capability", cap)
    spec = Deployment(
        name=name,
        replicas=replicas,
        image=image,
        command=shlex.split(command) if command else None,
        image_command=shlex.split(image_command) if image_command else None,
        capabilities=list(capability or []),
        env={k: v for k, _, v in pairs},
        restart_policy=_policy(restart_policy),
        max_concurrency=max_concurrency,
    )
    reply = run(with_client(nats_url, prefix, lambda c: c.deploy(spec)))
    table = Table(title=f"deployment {reply.deployment.name}: {reply.deployment.replicas} replicas")
    table.add_column("replica", justify="right")
    table.add_column("node")
    for p in reply.placements:
        table.add_row(str(p.replica), p.node_id)
    console.print(table)


def _policy(value: str) -> RestartPolicy:
    return value  # type: ignore[return-value]


@app.command()
def undeploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Delete a deployment; its replicas are stopped."""
    run(with_client(nats_url, prefix, lambda c: c.delete_deployment(name)))
    console.print(f"deleted deployment {name}")
