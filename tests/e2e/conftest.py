from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def agentbus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own AGENTBUS_HOME, so no real embedded state file leaks in."""
    home = tmp_path / "home"
    monkeypatch.setenv("AGENTBUS_HOME", str(home))
    return home
