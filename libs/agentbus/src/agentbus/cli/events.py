"""``agentbus events publish|tail|subscriptions``: agent events (``agentbus.events``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from agentbus.cli.common import (
    JsonFlag,
    NatsUrl,
    Prefix,
    console,
    fail,
    print_json,
    run,
    task_id,
    with_client,
)
from agentbus.client import Client
from agentbus.errors import ContractError
from agentbus.events.consumers import TopicConsumer, topic_consumers
from agentbus.events.reader import Start
from agentbus.events.tail import StoredEvent, tail_events
from agentbus.events.topics import check_key, publish_event
from agentbus.fleet.logs import since_time
from agentbus.messages import EventReceipt
from agentbus.names import check_topic, check_topic_pattern

SOURCE = "agentbus-cli"
"""``Agentbus-Source`` of the events the CLI publishes."""

events_app = typer.Typer(
    help="Agent events: publish on a topic, tail a pattern, list subscriptions.",
    no_args_is_help=True,
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(events_app, name="events")


def _checked(check: Any, value: str) -> str:
    try:
        return str(check(value))
    except ContractError as exc:
        raise fail(str(exc), 2) from None


@events_app.command("publish")
def publish(
    topic: Annotated[str, typer.Argument(help="Topic, e.g. review.file_reviewed.")],
    json_payload: Annotated[str, typer.Argument(metavar="JSON", help="The payload (JSON).")],
    key: Annotated[
        str | None, typer.Option("--key", help="Events of one key are handled in order.")
    ] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="Event id: a repeat within 2 min is stored once.")
    ] = None,
    json_: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Publish JSON as an event on TOPIC; print its stream sequence."""
    _checked(check_topic, topic)
    if key is not None:
        _checked(check_key, key)
    if event_id is not None:
        task_id(event_id, "event id")
    try:
        payload = msgspec.json.decode(json_payload)
    except msgspec.DecodeError as exc:
        raise fail(f"JSON is not valid JSON: {exc}", 2) from None

    async def go(client: Client) -> EventReceipt:
        return await publish_event(
            client.bus, topic, payload, key=key, event_id=event_id, source=SOURCE
        )

    sent = run(with_client(nats_url, prefix, go))
    if json_:
        print_json(msgspec.json.encode(msgspec.structs.asdict(sent)))
        return
    note = " (duplicate: stored before)" if sent.duplicate else ""
    console.print(f"event {sent.event_id} on {topic}: seq {sent.seq}{note}", highlight=False)


def _start(since: str | None) -> Start:
    if since is None:
        return None
    if since.isdigit():
        if int(since) < 1:
            raise fail("--since: a stream sequence starts at 1", 2)
        return int(since)
    try:
        return since_time(since)
    except ValueError as exc:
        raise fail(f"--since: {exc} (or a stream sequence)", 2) from None


def _line(event: StoredEvent, as_json: bool) -> str:
    if as_json:
        return msgspec.json.encode(event).decode()
    key = f" key={event.key}" if event.key is not None else ""
    payload = msgspec.json.encode(event.payload).decode()
    return f"{event.seq} {event.published_at:%H:%M:%S.%f} {event.topic}{key} {payload}"


@events_app.command("tail")
def tail(
    pattern: Annotated[str, typer.Argument(help="Topic pattern: review.>, *.done, >.")],
    since: Annotated[
        str | None,
        typer.Option(
            help="Start at a stream sequence, a duration ago (10m) or a time (RFC 3339); "
            "default: new events only."
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option("-n", min=1, help="Print this many events, then exit.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print events matching PATTERN as they are stored (until Ctrl-C, or -n of them)."""
    _checked(check_topic_pattern, pattern)
    start = _start(since)

    async def go(client: Client) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
        printed = 0
        async for event in tail_events(client.bus, pattern, start=start, stop=stop):
            sys.stdout.write(_line(event, json_) + "\n")
            sys.stdout.flush()
            printed += 1
            if n is not None and printed >= n:
                return

    run(with_client(nats_url, prefix, go))


@events_app.command("subscriptions")
def subscriptions(json_: JsonFlag = False, nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """The durable consumers of the events stream, by deployment: filter, pending, acks."""

    async def go(client: Client) -> list[TopicConsumer]:
        return await topic_consumers(client.bus)

    found = run(with_client(nats_url, prefix, go))
    if json_:
        print_json(msgspec.json.encode(found))
        return
    table = Table(title="event subscriptions")
    for col in ("deployment", "subscription", "part", "filter", "pending", "ack pending"):
        table.add_column(col, justify="right" if "pending" in col else "left")
    last = None
    for c in found:
        shown = c.deployment if c.deployment != last else ""
        last = c.deployment
        filters = ", ".join(c.filters) or "-"
        table.add_row(
            shown, c.subscription, c.part or "-", filters, str(c.pending), str(c.ack_pending)
        )
    console.print(table)
