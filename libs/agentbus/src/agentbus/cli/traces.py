"""``agentbus traces top|show|watch|deposit|kinds``: stigmergy traces (``agentbus.traces``)."""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec
import typer
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
from agentbus.client import Client
from agentbus.errors import UnavailableError
from agentbus.messages import TraceClaim, TraceKind
from agentbus.traces import TraceChange, Traces

traces_app = typer.Typer(
    help="Stigmergy traces: marks on locations that add up and decay.", no_args_is_help=True
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(traces_app, name="traces")

BusPrefix = Annotated[
    str | None,
    typer.Option("--bus-prefix", envvar="AGENTBUS_PREFIX", help="Prefix of every bus name."),
]
"""``top`` uses ``--prefix`` for locations, so the bus prefix is ``--bus-prefix`` there."""


class _Ranked(msgspec.Struct):
    location: str
    strength: float


class _Shown(msgspec.Struct):
    location: str
    traces: dict[str, float]
    claim: TraceClaim | None


@traces_app.command("top")
def top(
    kind: Annotated[str, typer.Argument(help="Trace kind, e.g. found_todo.")],
    prefix: Annotated[str, typer.Option("--prefix", help="Only locations starting so.")] = "",
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="How many.")] = 10,
    json_: JsonFlag = False,
    nats_url: NatsUrl = None,
    bus_prefix: BusPrefix = None,
) -> None:
    """The locations where KIND is strongest now, strongest first."""

    async def go(client: Client) -> list[tuple[str, float]]:
        return await Traces(client.bus).strongest(kind, prefix, n)

    ranked = run(with_client(nats_url, bus_prefix, go))
    if json_:
        print_json(msgspec.json.encode([_Ranked(loc, s) for loc, s in ranked]))
        return
    table = Table(title=f"strongest {kind}" + (f" under {prefix!r}" if prefix else ""))
    table.add_column("location")
    table.add_column("strength", justify="right")
    for loc, s in ranked:
        table.add_row(loc, f"{s:.4g}")
    console.print(table)


@traces_app.command("show")
def show(
    location: Annotated[str, typer.Argument(help="Any string: a path, a URL, a topic.")],
    json_: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """A location's traces (every kind at or above its floor) and who claims it."""

    async def go(client: Client) -> _Shown:
        traces = Traces(client.bus)
        sensed = await traces.sense(location)
        try:
            claim = await traces.claimed(location)
        except UnavailableError:  # no claims bucket: nobody ever claimed anything
            claim = None
        return _Shown(location=location, traces=dict(sorted(sensed.items())), claim=claim)

    shown = run(with_client(nats_url, prefix, go))
    if json_:
        print_json(msgspec.json.encode(shown))
        return
    table = Table(title=location)
    table.add_column("kind")
    table.add_column("strength", justify="right")
    for kind, s in shown.traces.items():
        table.add_row(kind, f"{s:.4g}")
    console.print(table)
    if shown.claim is not None:
        console.print(
            f"claimed by {shown.claim.holder} since {shown.claim.claimed_at:%H:%M:%S}"
            f" (ttl {shown.claim.ttl_s:.0f} s)",
            highlight=False,
        )


@traces_app.command("watch")
def watch(
    pattern: Annotated[str, typer.Argument(help="Location glob (* matches / too).")] = "*",
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only this kind.")] = None,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many (0: never).")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print deposits on locations matching PATTERN as they happen (Ctrl-C stops)."""

    def line(c: TraceChange) -> str:
        if json_:
            return msgspec.json.encode(c).decode()
        return f"{c.at:%H:%M:%S.%f} {c.kind} {c.location} +{c.amount:g} -> {c.strength:.4g}"

    async def go(client: Client) -> None:
        seen = 0
        async for change in Traces(client.bus).watch(pattern, kinds=kind or None):
            sys.stdout.write(line(change) + "\n")
            sys.stdout.flush()
            seen += 1
            if count and seen >= count:
                return

    if not json_:
        console.print(f"watching {pattern!r}; Ctrl-C stops", highlight=False)
    run(with_client(nats_url, prefix, go))


@traces_app.command("deposit")
def deposit(
    location: Annotated[str, typer.Argument(help="Any string: a path, a URL, a topic.")],
    kind: Annotated[str, typer.Argument(help="Trace kind.")],
    amount: Annotated[float, typer.Argument(help="Amount (> 0).")] = 1.0,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Deposit AMOUNT of KIND at LOCATION and print the strength after it."""

    async def go(client: Client) -> float:
        traces = Traces(client.bus)
        await traces.deposit(location, kind, amount)
        return await traces.strength(location, kind)

    console.print(f"{kind} at {location}: {run(with_client(nats_url, prefix, go)):.4g}")


@traces_app.command("kinds")
def kinds(json_: JsonFlag = False, nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """Every trace kind with its half-life, floor and forgetting time."""

    async def go(client: Client) -> list[TraceKind]:
        return await Traces(client.bus).kinds()

    found = run(with_client(nats_url, prefix, go))
    if json_:
        print_json(msgspec.json.encode(found))
        return
    table = Table(title="trace kinds")
    for col in ("kind", "half_life_s", "floor", "forget_after_s"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for k in found:
        table.add_row(k.kind, f"{k.half_life_s:g}", f"{k.floor:g}", f"{k.forget_after_s:g}")
    console.print(table)
