"""``agentbus submit|task``: tasks."""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec
import typer

from agentbus.cli.common import (
    NatsUrl,
    Prefix,
    app,
    fail,
    print_json,
    run,
    token,
    with_client,
)
from agentbus.client import Client
from agentbus.messages import TaskRecord, encode


@app.command()
def submit(
    capability: Annotated[str, typer.Argument(help="Capability that handles the task.")],
    json_input: Annotated[
        str | None, typer.Argument(metavar="[JSON_INPUT]", help="Input as JSON ('-': stdin).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Wait at most this long.")] = 60.0,
    priority: Annotated[int, typer.Option(min=0, max=9)] = 0,
    max_attempts: Annotated[int, typer.Option(min=1, max=100)] = 3,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Submit one task and print its record as JSON (with --wait: the final record)."""
    text = sys.stdin.read() if json_input == "-" else (json_input or "null")
    try:
        raw = msgspec.Raw(msgspec.json.encode(msgspec.json.decode(text)))
    except msgspec.DecodeError as exc:
        raise fail(f"JSON_INPUT is not valid JSON: {exc}", 2) from None
    check = token("capability", capability)

    async def go(client: Client) -> TaskRecord:
        record = await client.submit(check, raw, priority=priority, max_attempts=max_attempts)
        return await client.wait(record.task_id, timeout_s=timeout_s) if wait else record

    record = run(with_client(nats_url, prefix, go))
    print_json(encode(record))
    if wait and record.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def task(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id.")],
    wait_s: Annotated[
        float, typer.Option(min=0, help="Wait up to this long for a final status.")
    ] = 0.0,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print a task's record as JSON."""

    async def go(client: Client) -> TaskRecord:
        record = await client.get(task_id)
        if wait_s > 0 and not record.terminal:
            record = await client.wait(task_id, timeout_s=wait_s)
        return record

    print_json(encode(run(with_client(nats_url, prefix, go))))
