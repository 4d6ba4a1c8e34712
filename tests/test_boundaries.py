"""Services talk over NATS only: no service imports another service's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir())


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_all_five_services_exist() -> None:
    assert SERVICES == ["checkpoint", "gateway", "registry", "scheduler", "supervisor"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_only_the_library_and_itself(service: str) -> None:
    own = f"agentbus_{service}"
    for path in (ROOT / "services" / service / "src").rglob("*.py"):
        foreign = {m for m in imported_modules(path) if m.startswith("agentbus_") and m != own}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_library_imports_no_service() -> None:
    for path in (ROOT / "libs" / "agentbus" / "src").rglob("*.py"):
        foreign = {m for m in imported_modules(path) if m.startswith("agentbus_")}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"
