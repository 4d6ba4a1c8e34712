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


def test_the_five_services_and_the_optional_archiver_exist() -> None:
    # The archiver runs only where an audit database is configured
    # (docs/decisions/0008-audit-archiver.md).
    assert SERVICES == ["archiver", "checkpoint", "gateway", "registry", "scheduler", "supervisor"]


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


def _full_imports(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, in full (``tests.gateway.conftest``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _outside_the_harness(module: str) -> bool:
    """Whether ``module`` is a conftest, a test module or a private module of ``tests``."""
    parts = module.split(".")
    if parts[0] != "tests" or parts[:2] == ["tests", "_harness"]:
        return False
    return any(p == "conftest" or p.startswith(("_", "test_")) for p in parts[1:])


def test_tests_and_bench_import_harness_code_only_from_tests_harness() -> None:
    """Shared test code lives in ``tests/_harness/``: nothing imports it from a conftest,
    a test module or a private module elsewhere in ``tests``."""
    bad = {}
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        if wrong := sorted(m for m in _full_imports(path) if _outside_the_harness(m)):
            bad[str(path.relative_to(ROOT))] = wrong
    assert bad == {}
