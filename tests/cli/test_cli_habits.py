"""CLI habits: ``--version``, shell completion, full output off a terminal, ``--json``."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from typer.testing import CliRunner

from agentbus import __version__
from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.client import Client
from tests._harness.services import running_scheduler

runner = CliRunner()


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"agentbus {__version__}"


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout


async def test_output_that_is_not_a_terminal_is_never_cut(bus: Bus) -> None:
    task_id = "t" * 120 + uuid.uuid4().hex[:8]
    env = {"AGENTBUS_NATS_URL": bus.settings.nats_url, "AGENTBUS_PREFIX": bus.names.prefix}
    async with running_scheduler(bus):
        await Client(bus).submit("nobody-serves", None, task_id=task_id)
        args = ["tasks", "--status", "queued", "--capability", "nobody-serves"]
        table = await asyncio.to_thread(runner.invoke, app, args, env=env)
        listed = await asyncio.to_thread(runner.invoke, app, [*args, "--json"], env=env)
    assert table.exit_code == 0, table.output
    assert task_id in table.stdout
    assert "…" not in table.stdout
    assert [t["task_id"] for t in json.loads(listed.stdout)["tasks"]] == [task_id]


@pytest.mark.parametrize(
    "command",
    [["ps"], ["nodes"], ["agents"], ["tasks"], ["traces", "top", "k"], ["traces", "kinds"]],
)
def test_every_listing_offers_json(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "--json" in result.stdout


def test_error_messages_keep_their_brackets() -> None:
    result = runner.invoke(app, ["task", "not a valid id!"])
    assert result.exit_code == 2
    assert "[A-Za-z0-9_-]" in result.stderr
