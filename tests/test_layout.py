"""The README's layout table lists every package of the library, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "libs/agentbus/src/agentbus"
MAX_MODULE_LINES = 400


def test_readme_layout_lists_each_library_package() -> None:
    listed = set(re.findall(r"^\| `agentbus/(\w+)/` \|", (ROOT / "README.md").read_text(), re.M))
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()}
    assert listed == packages - {"messages"}  # the contract is named in the first row


def test_architecture_parts_name_each_library_package() -> None:
    parts = (ROOT / "docs/architecture.md").read_text().split("## Parts", 1)[1].split("\n## ")[0]
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()}
    missing = {name for name in packages if f"`{name}/`" not in parts}
    assert missing == set()


def test_no_library_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(LIB)): n
        for p in LIB.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
