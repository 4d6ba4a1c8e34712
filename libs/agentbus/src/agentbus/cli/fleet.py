"""``agentbus apply|deploy|scale|delete``: change the fleet.

``apply -f fleet.yaml`` is the declarative way (``agentbus.fleet.spec`` describes the
file); ``deploy`` creates or replaces one deployment from options; ``scale`` changes
only replica counts (a compare-and-set in the scheduler, safe against a concurrent
``apply``); ``delete`` (alias ``undeploy``) removes deployments.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from agentbus.cli.common import (
    NatsUrl,
    Prefix,
    console,
    err_console,
    fail,
    run,
    token,
    with_client,
)
from agentbus.client import Client
from agentbus.errors import AgentBusError, NotFoundError, SecretError, SpecError
from agentbus.fleet.secrets import public_key_of
from agentbus.fleet.spec import FleetSpec, load_fleet
from agentbus.messages import (
    Deployment,
    DeploymentChange,
    DeployReply,
    NodeInfo,
    RestartPolicy,
)

_MARK = {
    "created": "[green]+[/green]",
    "updated": "[yellow]~[/yellow]",
    "unchanged": "[dim]=[/dim]",
    "deleted": "[red]-[/red]",
}


commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""


@commands.command()
def apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="Fleet file (YAML), see docs/operations.md.")
    ],
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete deployments that the file does not name.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show the changes; change nothing.")
    ] = False,
    secrets_key_id: Annotated[
        str | None,
        typer.Option(help="Seal secrets only if the published secrets key has this id."),
    ] = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Create, update (and with --prune delete) deployments to match a fleet file.

    Secret env values are sealed to the secrets public key the supervisors publish;
    only ciphertext leaves this process.
    """
    try:
        spec = load_fleet(file)
    except SpecError as exc:
        for line in str(exc).splitlines():
            err_console.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False)
        raise typer.Exit(2) from None
    counts = run(
        with_client(nats_url, prefix, lambda c: _apply(c, spec, prune, dry_run, secrets_key_id))
    )
    summary = ", ".join(f"{n} {change}" for change, n in counts.items() if n)
    console.print(f"{'dry run: ' if dry_run else ''}{summary or 'nothing to do'}")


def image_ref(ref: str) -> str:
    """``ref`` as the engine lists it: ``python`` → ``python:latest``, no ``docker.io/``."""
    for hub in ("docker.io/library/", "docker.io/"):
        if ref.startswith(hub):
            ref = ref[len(hub) :]
            break
    return ref if "@" in ref or ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


def image_on_no_node(image: str, nodes: list[NodeInfo]) -> bool:
    """Whether docker nodes are live and none reports ``image`` (digests: never)."""
    docker_nodes = [n for n in nodes if n.runtime == "docker"]
    if "@" in image or not docker_nodes:
        return False
    want = image_ref(image)
    return not any(want in {image_ref(i) for i in n.images} for n in docker_nodes)


async def _live_nodes(client: Client) -> list[NodeInfo]:
    try:
        return await client.nodes()
    except AgentBusError:  # the warning is a courtesy: apply goes on without it
        return []


async def _sealed(client: Client, spec: FleetSpec, key_id: str | None) -> list[Deployment]:
    """The fleet's deployments, their secret env values sealed to the published key."""
    if not spec.secrets:
        return spec.deployments
    published = await client.secrets_public_key()
    if key_id is not None and published.key_id != key_id:
        raise SecretError(
            f"the published secrets key is {published.key_id}, not {key_id}: nothing sealed"
        )
    err_console.print(f"  sealing secret env values to secrets key {published.key_id}")
    return spec.sealed(public_key_of(published))


async def _apply(
    client: Client, spec: FleetSpec, prune: bool, dry_run: bool, key_id: str | None = None
) -> dict[DeploymentChange, int]:
    counts: dict[DeploymentChange, int] = dict.fromkeys(_MARK, 0)  # type: ignore[arg-type]
    deployments = await _sealed(client, spec, key_id)
    before = await client.deployments()
    nodes = await _live_nodes(client)
    for d in deployments:
        if d.image and image_on_no_node(d.image, nodes):
            err_console.print(
                f"  [yellow]![/yellow] {d.name}: no node has image {escape(d.image)}; "
                "its supervisors pull it before starting replicas"
            )
        old = before.get(d.name)
        if dry_run:
            change: DeploymentChange = (
                "created" if old is None else ("unchanged" if old == d else "updated")
            )
            _print_change(d.name, change, old, d, None)
        else:
            reply = await client.deploy(d)
            change = reply.change or ("created" if old is None else "updated")
            _print_change(d.name, change, old, reply.deployment, reply)
        counts[change] += 1
    if prune:
        wanted = {d.name for d in deployments}
        for name in sorted(set(before) - wanted):
            if not dry_run:
                try:
                    await client.delete_deployment(name)
                except NotFoundError:
                    continue  # deleted meanwhile
            _print_change(name, "deleted", before[name], None, None)
            counts["deleted"] += 1
    return counts


def _print_change(
    name: str,
    change: DeploymentChange,
    old: Deployment | None,
    new: Deployment | None,
    reply: DeployReply | None,
) -> None:
    if change == "updated" and old is not None and new is not None:
        detail = "; ".join(changed_fields(old, new)) or "respecified"
    elif change == "created" and new is not None:
        detail = f"{new.replicas} replicas"
    else:
        detail = ""
    console.print(f"{_MARK[change]} {name:<24} {change:<9} {escape(detail)}".rstrip())
    for u in reply.unplaced if reply else []:
        err_console.print(
            f"  [yellow]![/yellow] {u.deployment}/{u.replica} unplaced: {escape(u.reason)}"
        )


def changed_fields(old: Deployment, new: Deployment, *, width: int = 40) -> list[str]:
    """What differs between two specs, one ``path: old → new`` per changed field.

    Nested Structs are compared field by field (``limits.memory_bytes``), lists as a
    whole; ``env`` values are never shown (they may be secrets), only their keys, nor
    ``secret_env`` ciphertexts (sealing is randomized: a secret applied again is
    ``sealed again`` whether or not its value changed).
    """
    a, b = _flat(msgspec.to_builtins(old)), _flat(msgspec.to_builtins(new))
    out = []
    for path in [*a, *(p for p in b if p not in a)]:
        if a.get(path) == b.get(path):
            continue
        if path.startswith(("env.", "secret_env.")):
            verb = "added" if path not in a else ("removed" if path not in b else "changed")
            if verb == "changed" and path.startswith("secret_env."):
                verb = "sealed again"
            out.append(f"{path} {verb}")
            continue
        was, now = repr(a.get(path)), repr(b.get(path))
        if len(was) + len(now) > width:
            out.append(path)
        else:
            out.append(f"{path}: {was} → {now}")
    return out


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    if path == "secret_env" and isinstance(value, dict):
        return {f"{path}.{k}": v for k, v in value.items()}
    if isinstance(value, dict) and (
        not path or path in ("env", "node_selector") or "type" in value
    ):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k != "type":
                out.update(_flat(v, f"{path}.{k}" if path else k))
        return out
    return {path: value}


@commands.command()
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
    """Create or replace one deployment from options and print its placements."""
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
    for u in reply.unplaced:
        table.add_row(str(u.replica), f"[yellow]unplaced[/yellow]: {escape(u.reason)}")
    console.print(table)


def _policy(value: str) -> RestartPolicy:
    return value  # type: ignore[return-value]


@commands.command()
def scale(
    targets: Annotated[
        list[str], typer.Argument(metavar="NAME=N...", help="Deployments and replica counts.")
    ],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Set the replica count of deployments; nothing else in their spec changes."""
    wanted: list[tuple[str, int]] = []
    for target in targets:
        name, sep, count = target.partition("=")
        if not sep or not count.isdigit() or not 0 <= int(count) <= 1000:
            raise fail(f"{target!r}: expected NAME=N with N in 0..1000", 2)
        wanted.append((token("deployment name", name), int(count)))

    async def go(client: Client) -> None:
        for name, count in wanted:
            reply = await client.scale(name, count)
            placed = len(reply.placements)
            if reply.change == "unchanged":
                console.print(f"{name}: already {count} replicas ({placed} placed)")
            else:
                console.print(f"{name}: scaled to {count} replicas ({placed} placed)")
            for u in reply.unplaced:
                err_console.print(
                    f"  [yellow]![/yellow] {name}/{u.replica} unplaced: {escape(u.reason)}"
                )

    run(with_client(nats_url, prefix, go))


@commands.command()
def delete(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Deployment names.")],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Delete deployments; their supervisors stop the replicas gracefully."""
    for name in names:
        token("deployment name", name)

    async def go(client: Client) -> list[str]:
        missing = []
        for name in names:
            try:
                reply = await client.delete_deployment(name)
            except NotFoundError:
                missing.append(name)
                continue
            console.print(
                f"deleted deployment {name} ({reply.deployment.replicas} replicas stopping)"
            )
        return missing

    if missing := run(with_client(nats_url, prefix, go)):
        raise fail(f"deployment {', '.join(map(repr, missing))} not found", 1)


@commands.command(hidden=True)
def undeploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Delete a deployment (alias of ``delete``)."""
    delete([name], nats_url, prefix)
