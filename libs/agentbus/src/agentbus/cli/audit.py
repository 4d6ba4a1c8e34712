"""``agentbus audit task|agent|approvals``: questions to the audit trail in PostgreSQL.

The database is ``--database-url`` (env ``AGENTBUS_AUDIT_DATABASE_URL``), which the
archiver fills from the events stream (``docs/operations.md``, "Audit trail").
psycopg is imported only when a command runs, so ``agentbus --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import SecretStr
from rich.table import Table
from rich.text import Text

from agentbus.audit import AuditSettings, EventRow
from agentbus.cli.common import JsonFlag, console, fail, run, task_id
from agentbus.fleet.logs import since_time

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow

audit_app = typer.Typer(
    help="The audit trail (PostgreSQL): a task's events, an agent's actions, approvals.",
    no_args_is_help=True,
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(audit_app, name="audit")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="AGENTBUS_AUDIT_DATABASE_URL",
        help="libpq URL of the audit database.",
        show_envvar=True,
    ),
]
Since = Annotated[
    str | None,
    typer.Option("--since", help="From this time on: a duration back (10m, 2h) or RFC 3339."),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Before this time: a duration back (10m) or RFC 3339."),
]
Limit = Annotated[int, typer.Option("--limit", min=1, help="Rows at most.")]
_SUMMARY_CHARS = 80


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return since_time(value)
    except ValueError as exc:
        raise fail(f"{option}: {exc}", 2) from None


def _ask(
    database_url: str | None,
    query: Callable[[AsyncConnection[TupleRow]], Awaitable[list[EventRow]]],
) -> list[EventRow]:
    from agentbus.audit.queries import connect

    settings = AuditSettings(database_url=SecretStr(database_url) if database_url else None)

    async def go() -> list[EventRow]:
        conn = await connect(settings)
        try:
            return await query(conn)
        finally:
            await conn.close()

    return run(go())


def _show(rows: list[EventRow], as_json: bool) -> None:
    if as_json:
        out = [
            {
                "seq": r.seq,
                "time": r.time.isoformat(),
                "subject": r.subject,
                "entity": r.entity,
                "kind": r.kind,
                "task_id": r.task_id,
                "agent_id": r.agent_id,
                "deployment": r.deployment,
                "capability": r.capability,
                "payload": json.loads(r.payload),
            }
            for r in rows
        ]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    table = Table("SEQ", "TIME", "EVENT", "TASK", "AGENT", "PAYLOAD")
    for r in rows:
        summary = r.payload if len(r.payload) <= _SUMMARY_CHARS else r.payload[:79] + "…"
        cells = (
            str(r.seq),
            r.time.isoformat(timespec="seconds"),
            f"{r.entity}.{r.kind}",
            r.task_id or "",
            r.agent_id or "",
            summary,
        )
        table.add_row(*(Text(cell) for cell in cells))  # text, never markup
    console.print(table)


@audit_app.command("task")
def task(
    task: Annotated[str, typer.Argument(metavar="TASK_ID", help="The task.")],
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Every event of one task, in stream order."""
    from agentbus.audit.queries import task_events

    wanted = task_id(task)
    _show(_ask(database_url, lambda conn: task_events(conn, wanted)), as_json)


@audit_app.command("agent")
def agent(
    agent_id: Annotated[str, typer.Argument(help="The agent (replica) id.")],
    since: Since = None,
    until: Until = None,
    limit: Limit = 1000,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """What one agent did (events naming it) in a time range, oldest first."""
    from agentbus.audit.queries import agent_events

    start, end = _time(since, "--since"), _time(until, "--until")
    rows = _ask(
        database_url,
        lambda conn: agent_events(conn, agent_id, since=start, until=end, limit=limit),
    )
    _show(rows, as_json)


@audit_app.command("approvals")
def approvals(
    since: Since = None,
    until: Until = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's.")] = None,
    limit: Limit = 1000,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Who approved what: approval requests and decisions, oldest first."""
    from agentbus.audit.queries import approval_events

    start, end = _time(since, "--since"), _time(until, "--until")
    wanted = task_id(task) if task else None
    rows = _ask(
        database_url,
        lambda conn: approval_events(conn, since=start, until=end, task_id=wanted, limit=limit),
    )
    _show(rows, as_json)
