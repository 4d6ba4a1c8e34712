"""The root group of ``agentbus``: each command's module is imported when it runs.

Importing a command module pulls in nats-py, pydantic settings, the message
contract and the fleet code (about a second of CPU); ``agentbus --help`` needs
none of it. :data:`COMMANDS` names each command's module and the first paragraph of
its help, so the root help is printed from this table alone; any other use of a
command (running it, its own ``--help``, completion) imports its module and builds
the real command from the module's ``commands`` Typer.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup


class Entry(NamedTuple):
    """Where a root command lives and what the root help says of it."""

    module: str
    """Module under ``agentbus.cli`` whose ``commands`` Typer defines the command."""
    help: str
    """First paragraph of the command's help, as ``agentbus --help`` shows it."""
    hidden: bool = False


COMMANDS: dict[str, Entry] = {
    "cluster": Entry(
        "cluster", "Show the NATS servers, each stream's leader and replicas, and the nodes."
    ),
    "apply": Entry(
        "fleet", "Create, update (and with --prune delete) deployments to match a fleet file."
    ),
    "deploy": Entry(
        "fleet", "Create or replace one deployment from options and print its placements."
    ),
    "scale": Entry(
        "fleet", "Set the replica count of deployments; nothing else in their spec changes."
    ),
    "delete": Entry("fleet", "Delete deployments; their supervisors stop the replicas gracefully."),
    "undeploy": Entry("fleet", "Delete a deployment (alias of ``delete``).", hidden=True),
    "ps": Entry(
        "observe", "List replicas: node, state (crash-loop too), restarts, uptime, last exit."
    ),
    "logs": Entry(
        "observe", "Print a deployment's (or one replica's) output; stderr lines go to stderr."
    ),
    "nodes": Entry(
        "observe",
        "List live nodes: labels, replicas running/capacity and placed, declared CPU/memory.",
    ),
    "agents": Entry("observe", "List live agents."),
    "ping": Entry(
        "observe",
        "List the services that answer $SRV.PING (exit 1 if one of the five is missing).",
    ),
    "schema": Entry("stack", "Print the JSON Schema of every wire message."),
    "embedded": Entry(
        "stack",
        "Run nats-server and the five services (and the archiver, if given a database) "
        "until Ctrl-C.",
    ),
    "submit": Entry(
        "tasks",
        "Submit one task and print its record as JSON (with --wait: the final record).",
    ),
    "task": Entry(
        "tasks", "Print a task's record as JSON (with --history: every status change as JSON)."
    ),
    "tasks": Entry("tasks", "List one page of tasks by status."),
    "resubmit": Entry(
        "tasks", "Run an ended task again as a new task; print the new record as JSON."
    ),
    "cancel": Entry("tasks", "Cancel a task and its subtasks; print the reply as JSON."),
    "demo": Entry("stack", "Demonstrations on a real stack."),
    "approvals": Entry("approvals", "Human approval gates: list, show, approve, deny."),
    "audit": Entry(
        "audit", "The audit trail (PostgreSQL): a task's events, an agent's actions, approvals."
    ),
    "auth": Entry(
        "auth", "NATS credentials: create the fleet's keys, mint service identities, list them."
    ),
    "events": Entry(
        "events", "Agent events: publish on a topic, tail a pattern, list subscriptions."
    ),
    "tokens": Entry("tokens", "Bearer tokens of the HTTP gateway: create, list, revoke."),
    "traces": Entry("traces", "Stigmergy traces: marks on locations that add up and decay."),
}
"""Every root command in help order: name -> module and help line."""


def load_commands(module: str) -> dict[str, Any]:
    """The click commands that ``agentbus.cli.<module>`` defines, by name.

    Raises:
        ImportError: no such module.
        AttributeError: the module has no ``commands`` Typer.
    """
    commands: typer.Typer = importlib.import_module(f"agentbus.cli.{module}").commands
    return dict(typer.main.get_group(commands).commands)


class LazyGroup(TyperGroup):
    """A Typer group that starts with a stand-in per :data:`COMMANDS` entry.

    A stand-in has the command's name and help line, so help, ordering and "did you
    mean" work without imports; asked for a command other than for help,
    :meth:`get_command` imports the command's module and puts its real commands in
    place of their stand-ins.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, entry in COMMANDS.items():
            self.commands[name] = TyperCommand(name, help=entry.help, hidden=entry.hidden)
        self._stand_ins = set(COMMANDS)
        self._formatting_help = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self._stand_ins and not self._formatting_help:
            loaded = load_commands(COMMANDS[cmd_name].module)
            self.commands.update(loaded)
            self._stand_ins -= loaded.keys()
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._formatting_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._formatting_help = False
