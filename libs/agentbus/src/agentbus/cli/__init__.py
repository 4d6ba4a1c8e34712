"""The ``agentbus`` command: submit tasks, inspect the fleet, run a stack or the demo.

Every command that talks to a stack takes ``--nats-url`` and ``--prefix`` (env
``AGENTBUS_NATS_URL``/``AGENTBUS_PREFIX``); without them it uses the running embedded
stack (``agentbus embedded``), else ``nats://127.0.0.1:4222`` and ``agentbus``.
Credentials: ``AGENTBUS_CREDS_FILE``, else the embedded stack's operator creds (from
its state file), else none (``agentbus.cli.connect``).
Expected failures print one line on stderr and exit non-zero: 2 for invalid input
(``ContractError``), 1 for the rest (not found, unavailable, timeout, ...).
Commands are imported on use (``agentbus.cli._lazy``): ``agentbus --help`` imports
Typer and this package only.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agentbus.cli._lazy import LazyGroup

__all__ = ["app", "main"]

app = typer.Typer(
    cls=LazyGroup,
    name="agentbus",
    help="Run fleets of AI agents over NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_CONSOLE_SCRIPT = "agentbus.console_script"
"""Key of ``ctx.obj`` set by :func:`main`: a command that runs logs errors only, on stderr."""


def _print_version(value: bool) -> None:
    if value:
        from agentbus import __version__

        typer.echo(f"agentbus {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run fleets of AI agents over NATS JetStream."""
    if isinstance(ctx.obj, dict) and ctx.obj.get(_CONSOLE_SCRIPT):  # not imported for --help
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="ERROR", format="{level}: {message}")


def main() -> None:
    """Console-script entry point."""
    app(obj={_CONSOLE_SCRIPT: True})
