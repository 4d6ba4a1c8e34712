"""``agentbus audit``: a task's events, an agent's actions in a time range, approvals,
read from a real PostgreSQL the archiver filled from a real events stream."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.settings import BusSettings
from tests._harness.archiver import fill_sample_trail
from tests._harness.cli import on_bus, runner

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]


async def _fill(bus: Bus, url: str) -> None:
    """The sample trail; ``task-a``'s approval was approved by alice."""
    request = {"task_id": "task-a", "agent_id": "echo-0", "summary": "push to main"}
    decision = {"task_id": "task-a", "decided_by": "alice", "option": "approve"}
    await fill_sample_trail(bus, url, request, decision)


@pytest.fixture
def filled(bus_settings: BusSettings, audit_database_url: str) -> str:
    on_bus(bus_settings, lambda bus: _fill(bus, audit_database_url))
    return audit_database_url


def _json(*args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_task_lists_every_event_of_one_task_in_order(filled: str) -> None:
    rows = _json("audit", "task", "task-a", "--database-url", filled)
    assert [(r["seq"], r["kind"]) for r in rows] == [
        (1, "queued"),
        (2, "running"),
        (4, "succeeded"),
        (6, "requested"),  # the approval events name the task too
        (7, "decided"),
    ]
    assert rows[1]["payload"]["agent_id"] == "echo-0"  # type: ignore[index]
    assert rows[2]["capability"] == "echo"


def test_agent_lists_what_it_did_in_a_time_range(filled: str) -> None:
    every = _json("audit", "agent", "echo-0", "--database-url", filled)
    assert [r["seq"] for r in every] == [5, 2, 4, 6]  # by time: the join is 3 h old
    recent = _json("audit", "agent", "echo-0", "--since", "2h", "--database-url", filled)
    assert [r["seq"] for r in recent] == [2, 4, 6]
    older = _json("audit", "agent", "echo-0", "--until", "2h", "--database-url", filled)
    assert [(r["seq"], r["entity"], r["kind"]) for r in older] == [(5, "agent", "joined")]


def test_approvals_say_who_approved_what(filled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_AUDIT_DATABASE_URL", filled)
    rows = _json("audit", "approvals")
    assert [(r["kind"], r["task_id"]) for r in rows] == [
        ("requested", "task-a"),
        ("decided", "task-a"),
    ]
    assert rows[1]["payload"] == {"task_id": "task-a", "decided_by": "alice", "option": "approve"}
    assert _json("audit", "approvals", "--task", "task-b") == []
    table = runner.invoke(app, ["audit", "approvals"])
    assert table.exit_code == 0 and "approval.decided" in table.stdout and "alice" in table.stdout


def test_without_a_database_it_says_how_to_name_one() -> None:
    result = runner.invoke(app, ["audit", "task", "task-a"])
    assert result.exit_code == 2
    assert "AGENTBUS_AUDIT_DATABASE_URL" in result.stderr


def test_an_unreachable_database_is_an_error_not_a_traceback(postgres: object) -> None:
    url = "postgresql://postgres@127.0.0.1:1/none"
    result = runner.invoke(app, ["audit", "task", "task-a", "--database-url", url])
    assert result.exit_code == 1
    assert "audit database unreachable" in result.stderr


def test_the_cli_does_not_import_psycopg_to_start() -> None:
    code = "import sys, agentbus.cli; assert 'psycopg' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
