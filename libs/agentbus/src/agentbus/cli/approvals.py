"""``agentbus approvals list|show|approve|deny``: human approval gates.

A handler's ``ctx.request_approval`` waits until someone decides; ``approve`` and
``deny`` decide as ``cli:<user>`` (``--by``, env ``AGENTBUS_USER``, default the
login name). Deciding needs operator credentials: agents may not.
"""

from __future__ import annotations

import getpass
import re
from typing import Annotated, Literal, cast

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
    with_client,
)
from agentbus.client import Client
from agentbus.client.approvals import decide_approval, get_approval, list_approvals
from agentbus.messages import ApprovalRecord, encode
from agentbus.messages.approvals import APPROVAL_ID_PATTERN

approvals_app = typer.Typer(
    help="Human approval gates: list, show, approve, deny.", no_args_is_help=True
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(approvals_app, name="approvals")

Status = Literal["pending", "decided", "all"]
ApprovalIdArg = Annotated[str, typer.Argument(metavar="ID", help="Approval id (32 hex).")]
Comment = Annotated[str, typer.Option("--comment", "-m", help="Why (recorded, shown).")]
By = Annotated[
    str | None,
    typer.Option("--by", envvar="AGENTBUS_USER", help="Who decides (default: login name)."),
]


def _check_id(value: str) -> str:
    if not re.fullmatch(APPROVAL_ID_PATTERN, value):
        raise fail(f"approval id {value!r} is not 32 lowercase hex characters", 2)
    return value


@approvals_app.command("list")
def list_command(
    status: Annotated[str, typer.Option("--status", help="pending, decided or all.")] = "pending",
    task: Annotated[str | None, typer.Option("--task", help="Only this task's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    json_out: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List approval requests, newest first (default: the pending ones)."""
    if status not in ("pending", "decided", "all"):
        raise fail(f"--status {status}: one of pending, decided, all", 2)

    async def go(client: Client) -> list[ApprovalRecord]:
        return await list_approvals(
            client.bus, status=cast(Status, status), task_id=task, limit=limit
        )

    found = run(with_client(nats_url, prefix, go))
    if json_out:
        print_json(encode(found))
        return
    table = Table(title=f"{status} approvals")
    for column in ("APPROVAL", "TASK", "CAPABILITY", "ASKED", "SUMMARY", "OPTIONS", "DECISION"):
        table.add_column(column)
    for a in found:
        d = a.decision
        decided = f"{d.option} by {d.decided_by}" if d is not None else ""
        options = "/".join(f"{o}*" if o == a.default else o for o in a.options)
        row = (a.approval_id, a.task_id, a.capability, age(a.requested_at), a.summary, options)
        table.add_row(*row, decided)
    console.print(table)


@approvals_app.command()
def show(approval_id: ApprovalIdArg, nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """Print one approval request (and its decision) as JSON."""
    _check_id(approval_id)

    async def go(client: Client) -> ApprovalRecord:
        return await get_approval(client.bus, approval_id)

    print_json(encode(run(with_client(nats_url, prefix, go))))


def _decide(
    approval_id: str,
    option: str,
    comment: str,
    by: str | None,
    nats_url: str | None,
    prefix: str | None,
) -> None:
    _check_id(approval_id)
    who = f"cli:{by or getpass.getuser()}"

    async def go(client: Client) -> ApprovalRecord:
        return await decide_approval(
            client.bus, approval_id, option, decided_by=who, comment=comment
        )

    print_json(encode(run(with_client(nats_url, prefix, go))))


@approvals_app.command()
def approve(
    approval_id: ApprovalIdArg,
    option: Annotated[str, typer.Option("--option", help="Option to choose.")] = "approve",
    comment: Comment = "",
    by: By = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Decide a pending request with ``approve`` (or --option); print it as JSON.

    Exits 1 if it was decided already (or its time was up), 2 for an option it
    does not offer.
    """
    _decide(approval_id, option, comment, by, nats_url, prefix)


@approvals_app.command()
def deny(
    approval_id: ApprovalIdArg,
    option: Annotated[str, typer.Option("--option", help="Option to choose.")] = "deny",
    comment: Comment = "",
    by: By = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Decide a pending request with ``deny`` (or --option); print it as JSON."""
    _decide(approval_id, option, comment, by, nats_url, prefix)
