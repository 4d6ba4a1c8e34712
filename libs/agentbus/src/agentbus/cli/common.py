"""Shared pieces of the ``agentbus`` commands: options, output, error handling."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from agentbus.cli.connect import connect_client, resolve_settings
from agentbus.client import Client
from agentbus.errors import AgentBusError, ContractError, PermissionDeniedError
from agentbus.names import check_task_id, check_token

T = TypeVar("T")
Runtime = Literal["auto", "docker", "process"]

_WIDE_COLUMNS = 100_000
"""Width when output is not a terminal: tables are never cut (full ids, no ellipsis)."""
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else _WIDE_COLUMNS)
err_console = Console(stderr=True, soft_wrap=True)

NatsUrl = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="AGENTBUS_NATS_URL", help="NATS server URL(s)."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", envvar="AGENTBUS_PREFIX", help="Prefix of every bus name."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int) -> typer.Exit:
    """An exit with ``code`` after printing ``message`` on stderr (as text, not markup)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def token(kind: str, value: str) -> str:
    """``value`` checked as a subject-safe token, or exit 2 naming ``kind``."""
    try:
        return check_token(kind, value)
    except ContractError as exc:
        raise fail(str(exc), 2) from None


def task_id(value: str, kind: str = "task id") -> str:
    """``value`` checked as a task id (``agentbus.names.check_task_id``), or exit 2."""
    try:
        return check_task_id(value, kind)
    except ContractError as exc:
        raise fail(str(exc), 2) from None


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main``; turn expected errors into a message and an exit code."""
    try:
        return asyncio.run(main)
    except ContractError as exc:
        raise fail(str(exc), 2) from None
    except AgentBusError as exc:
        raise fail(str(exc), 1) from None
    except OSError as exc:
        raise fail(f"{type(exc).__name__}: {exc}", 1) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


async def with_client(
    nats_url: str | None, prefix: str | None, fn: Callable[[Client], Awaitable[T]]
) -> T:
    """Run ``fn`` with a client connected per ``--nats-url``/``--prefix``, then close it."""
    client = await connect_client(resolve_settings(nats_url, prefix))
    try:
        return await fn(client)
    except TimeoutError as exc:  # a refused JetStream request times out
        if subject := client.bus.denied():
            raise PermissionDeniedError(
                subject,
                f"permission denied: these credentials may not publish to {subject!r} "
                "(AGENTBUS_CREDS_FILE names whose they are)",
            ) from exc
        raise
    finally:
        await client.close()


def print_json(data: bytes) -> None:
    """Print JSON ``data`` indented on stdout."""
    sys.stdout.write(msgspec.json.format(data, indent=2).decode() + "\n")


def age(when: datetime) -> str:
    """How long ago ``when`` (UTC) was, as ``"12.3 s"``."""
    return f"{(datetime.now(UTC) - when).total_seconds():.1f} s"
