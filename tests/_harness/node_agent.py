"""The Node.js example agent (examples/node-agent) for the tests: the node binary and
the agent as a process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "examples" / "node-agent"
SETUP_HINT = "run `bash scripts/setup.sh` (it runs `npm ci --prefix examples/node-agent`)"


@pytest.fixture
def node() -> str:
    """The node binary; a missing node or node_modules fails, never skips."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"`node` is not on PATH: {SETUP_HINT}")
    if not (AGENT_DIR / "node_modules" / "nats").is_dir():
        pytest.fail(f"{AGENT_DIR / 'node_modules'} is missing: {SETUP_HINT}")
    return node


def start_agent(node: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``node agent.mjs`` with its output (stdout and stderr) in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [node, str(AGENT_DIR / "agent.mjs")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
