"""``agentbus submit|task|tasks|resubmit|cancel``: tasks."""

from __future__ import annotations

import sys
from typing import Annotated, cast

import msgspec
import typer
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
from agentbus.cli.common import (
    task_id as check_id,
)
from agentbus.client import Client
from agentbus.messages import (
    CancelReply,
    SubmitReply,
    TaskEvent,
    TaskRecord,
    TasksReply,
    TaskStatus,
    encode,
)

commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""


@commands.command()
def submit(
    capability: Annotated[str, typer.Argument(help="Capability that handles the task.")],
    json_input: Annotated[
        str | None, typer.Argument(metavar="[JSON_INPUT]", help="Input as JSON ('-': stdin).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Wait at most this long.")] = 60.0,
    priority: Annotated[int, typer.Option(min=0, max=9)] = 0,
    max_attempts: Annotated[int, typer.Option(min=1, max=100)] = 3,
    require_agent: Annotated[
        bool,
        typer.Option("--require-agent", help="Refuse it (exit 1) if no live agent serves it."),
    ] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Submit one task and print its record as JSON (with --wait: the final record).

    A wait that runs out says where the task is (exit 1), e.g. still queued because
    no live agent serves its capability.
    """
    text = sys.stdin.read() if json_input == "-" else (json_input or "null")
    try:
        raw = msgspec.Raw(msgspec.json.encode(msgspec.json.decode(text)))
    except msgspec.DecodeError as exc:
        raise fail(f"JSON_INPUT is not valid JSON: {exc}", 2) from None
    check = token("capability", capability)

    async def go(client: Client) -> TaskRecord:
        record = await client.submit(
            check, raw, priority=priority, max_attempts=max_attempts, require_agent=require_agent
        )
        return await client.wait(record.task_id, timeout_s=timeout_s) if wait else record

    record = run(with_client(nats_url, prefix, go))
    print_json(encode(record))
    if wait and record.status != "succeeded":
        raise typer.Exit(1)


@commands.command()
def task(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id.")],
    wait_s: Annotated[
        float, typer.Option(min=0, help="Wait up to this long for a final status.")
    ] = 0.0,
    history: Annotated[
        bool, typer.Option("--history", help="Print the task's events (oldest first) instead.")
    ] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print a task's record as JSON (with --history: every status change as JSON)."""
    check_id(task_id)

    async def go(client: Client) -> TaskRecord | list[TaskEvent]:
        if history:
            return await client.history(task_id)
        record = await client.get(task_id)
        if wait_s > 0 and not record.terminal:
            record = await client.wait(task_id, timeout_s=wait_s)
        return record

    result = run(with_client(nats_url, prefix, go))
    if history and not result:
        raise fail(f"no events for task {task_id!r}", 1)
    print_json(encode(result))


STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "expired", "dead", "all")


@commands.command()
def tasks(
    status: Annotated[
        str, typer.Option("--status", help=f"Task status to list: {', '.join(STATUSES)}.")
    ] = "dead",
    capability: Annotated[str | None, typer.Option(help="Only this capability.")] = None,
    parent: Annotated[str | None, typer.Option(help="Only subtasks of this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most tasks to list.")] = 100,
    cursor: Annotated[
        str | None, typer.Option(help="Start where a previous page ended (its next cursor).")
    ] = None,
    json_out: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List one page of tasks by status.

    Dead tasks (the dead letters) come newest first; other statuses in the order
    their records were last written. A page may be short while a next cursor is
    printed: pass it with --cursor for the next page.
    """
    if status not in STATUSES:
        raise fail(f"--status {status}: one of {', '.join(STATUSES)}", 2)
    cap = token("capability", capability) if capability else None
    wanted = None if status == "all" else cast(TaskStatus, status)

    async def go(client: Client) -> TasksReply:
        return await client.list_tasks(
            wanted, capability=cap, parent_id=parent, limit=limit, cursor=cursor
        )

    reply = run(with_client(nats_url, prefix, go))
    if json_out:
        print_json(encode(reply))
        return
    title = f"{reply.total} {status} tasks" if status == "dead" else f"{status} tasks"
    table = Table(title=title + (f" ({cap})" if cap else ""))
    when = "DEAD" if status == "dead" else "UPDATED"
    columns = ["TASK", "CAPABILITY", "STATUS", when, "ATTEMPTS", "LAST ERROR"]
    if wanted is not None:  # one status: no column for it
        columns.remove("STATUS")
    for column in columns:
        table.add_column(column)
    for record in reply.tasks:
        error = f"{record.error.error_type}: {record.error.message}" if record.error else ""
        at = record.finished_at if status == "dead" else record.updated_at
        row = [
            record.task_id,
            record.capability,
            record.status,
            age(at) if at else "",
            str(len(record.attempts)),
            error,
        ]
        if wanted is not None:
            del row[2]
        table.add_row(*row)
    console.print(table)
    if reply.next_cursor is not None:
        console.print(f"more: --cursor {reply.next_cursor}", highlight=False)


@commands.command()
def resubmit(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Id of a dead/failed/expired task.")],
    new_id: Annotated[
        str | None, typer.Option("--new-id", help="Id of the new task (default ID-r<n>).")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, max=100, help="Attempt budget (default: the old one).")
    ] = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Run an ended task again as a new task; print the new record as JSON."""
    check_id(task_id)
    if new_id is not None:
        check_id(new_id, "--new-id")

    async def go(client: Client) -> SubmitReply:
        return await client.resubmit(task_id, new_task_id=new_id, max_attempts=max_attempts)

    print_json(encode(run(with_client(nats_url, prefix, go)).task))


@commands.command()
def cancel(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the task to cancel.")],
    recursive: Annotated[
        bool, typer.Option("--recursive/--only", help="Cancel its subtasks too (default).")
    ] = True,
    reason: Annotated[str, typer.Option(help="Recorded in the cancelled records.")] = "",
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Cancel a task and its subtasks; print the reply as JSON.

    A queued task never starts; a running one has its handler cancelled within a second.
    Exits 1 if the task had already ended with another status (it keeps that status).
    """
    check_id(task_id)

    async def go(client: Client) -> CancelReply:
        return await client.cancel(task_id, recursive=recursive, reason=reason)

    reply = run(with_client(nats_url, prefix, go))
    print_json(encode(reply))
    if reply.task.status != "cancelled":
        raise typer.Exit(1)
