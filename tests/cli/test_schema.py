"""The committed JSON Schema matches the Structs, and `agentbus schema` prints it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from agentbus.cli import app
from agentbus.messages import ALL_MESSAGES
from agentbus.schema import render

COMMITTED = Path(__file__).resolve().parents[2] / "libs" / "agentbus" / "schema" / "messages.json"


def test_committed_schema_is_current() -> None:
    assert COMMITTED.exists(), f"{COMMITTED} is missing: run `just schema`"
    assert COMMITTED.read_text() == render(), (
        f"{COMMITTED} is stale: run `just schema` "
        "(uv run python -m agentbus.schema > libs/agentbus/schema/messages.json)"
    )


def test_schema_covers_every_message() -> None:
    doc = json.loads(render())
    names = {cls.__name__ for cls in ALL_MESSAGES}
    assert names <= set(doc["$defs"])
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in doc["anyOf"]} == names
    submit = doc["$defs"]["SubmitTask"]
    assert submit["properties"]["type"] == {"enum": ["SubmitTask"]}
    assert "capability" in submit["required"]
    assert submit["properties"]["input"]["default"] is None


def test_python_m_agentbus_schema_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentbus.schema"], capture_output=True, text=True, check=True
    ).stdout
    assert out == render()


def test_cli_schema_prints_it() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == render()
