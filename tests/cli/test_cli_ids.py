"""Task ids given on the command line are checked before anything touches the bus."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agentbus.cli import app
from agentbus.embedded import free_port

runner = CliRunner()
LONG = "a" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ["task", LONG],
        ["task", "a.b", "--history"],
        ["cancel", LONG],
        ["resubmit", LONG],
        ["resubmit", "ok", "--new-id", "a b"],
    ],
    ids=["task", "history", "cancel", "resubmit", "resubmit-new-id"],
)
def test_bad_task_id_is_a_one_line_error_with_exit_2(args: list[str]) -> None:
    # a dead URL: the id must be refused before any connect is tried
    result = runner.invoke(app, [*args, "--nats-url", f"nats://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is not valid: use 1-128 characters of [A-Za-z0-9_-]" in lines[0]
    assert len(lines[0]) < 300
