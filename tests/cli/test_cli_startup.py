"""The CLI imports a command's code only when that command runs (``agentbus.cli._lazy``)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from agentbus.cli import app
from agentbus.cli._lazy import COMMANDS, LazyGroup, load_commands

runner = CliRunner()

HEAVY = {"nats", "msgspec", "pydantic", "pydantic_settings", "httpx", "aiohttp", "psycopg"}
HEAVY |= {"aiodocker", "docker", "jwt", "nkeys", "loguru"}
"""Top-level packages that ``agentbus --help`` must not import."""


def imported_by(*argv: str) -> list[str]:
    """The modules ``agentbus *argv`` has imported when it exits, run in a fresh process.

    A module ``agentbus._deferred`` stands in for but has not loaded yet is left out.
    """
    code = (
        "import json, sys\n"
        f"sys.argv = ['agentbus', *{list(argv)!r}]\n"
        "from agentbus.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [n for n, m in sys.modules.items() if type(m).__name__ != '_Deferred']\n"
        "sys.stderr.write(json.dumps(sorted(loaded)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stderr.splitlines()[-1])
    return modules


@pytest.mark.parametrize("argv", [["--help"], [], ["--version"]])
def test_root_help_imports_no_command_code(argv: list[str]) -> None:
    modules = imported_by(*argv)
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []
    assert [m for m in modules if m.startswith("agentbus")] == [
        "agentbus",
        "agentbus._deferred",
        "agentbus._exports",
        "agentbus.cli",
        "agentbus.cli._lazy",
    ]


def test_a_command_imports_its_own_module_only() -> None:
    modules = set(imported_by("tasks", "--help"))
    assert "agentbus.cli.tasks" in modules
    others = {f"agentbus.cli.{entry.module}" for entry in COMMANDS.values()} - {
        "agentbus.cli.tasks"
    }
    assert others & modules == set()


@pytest.mark.parametrize("module", sorted({entry.module for entry in COMMANDS.values()}))
def test_the_table_matches_each_module(module: str) -> None:
    """Each command's name, help line and visibility in ``COMMANDS`` are its module's."""
    loaded = load_commands(module)
    assert sorted(loaded) == sorted(n for n, e in COMMANDS.items() if e.module == module)
    for name, command in loaded.items():
        first_paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert (COMMANDS[name].help, COMMANDS[name].hidden) == (first_paragraph, command.hidden)


def test_root_help_lists_every_visible_command_in_table_order() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("│ ")]
    listed = [row[1] for row in rows if len(row) > 1 and row[1] in COMMANDS]
    assert listed == [name for name, entry in COMMANDS.items() if not entry.hidden]
    for entry in COMMANDS.values():
        assert entry.help in result.stdout or entry.hidden


def test_a_mistyped_command_gets_a_suggestion() -> None:
    result = runner.invoke(app, ["tsks"])
    assert result.exit_code == 2
    assert "Did you mean 'tasks'" in result.stderr


def test_a_hidden_command_still_runs() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    undeploy = group.get_command(typer.Context(group, info_name="agentbus"), "undeploy")
    assert undeploy is not None and undeploy.callback is not None
    assert undeploy.callback.__module__ == "agentbus.cli.fleet"


def test_a_listing_command_loads_no_stack_or_jwt_code() -> None:
    # It finds a running embedded stack through its state file alone.
    modules = set(imported_by("nodes", "--help"))
    assert "agentbus.embedded.state" in modules
    assert {"agentbus.embedded.stack", "agentbus.embedded.auth", "jwt"} & modules == set()
