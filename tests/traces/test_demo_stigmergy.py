"""The stigmergic review demo: walkers share the work through traces alone."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from agentbus.agents.reviewer import ReviewTree, location, python_files, review_source, walk
from agentbus.bus import Bus
from agentbus.embedded import EmbeddedStack
from agentbus.traces import Traces

CLI = [sys.executable, "-m", "agentbus.cli"]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The stdlib ``json`` package, files with TODOs, odd names and a bad file."""
    root = tmp_path / "tree"
    shutil.copytree(STDLIB / "json", root / "json", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "hot").mkdir()
    (root / "hot" / "many todos.py").write_text(
        "".join(f"x{i} = {i}  # TODO {i}\n" for i in range(7))
    )
    (root / "hot" / "one.todo.py").write_text("# FIXME once\n")
    (root / "ünï").mkdir()
    (root / "ünï" / "cöde.py").write_text("def f():\n    pass\n")
    (root / "bad.py").write_bytes(b"x = '\xff'\n")
    return root


async def test_walkers_cover_every_file_once(bus: Bus, tree: Path) -> None:
    files = [rel for rel, _ in python_files(tree)]
    traces = Traces(bus)
    jobs = [ReviewTree(root=str(tree), run="r1", walker=i) for i in range(4)]
    reports = await asyncio.gather(*(walk(traces, j, f"agent-{j.walker}") for j in jobs))
    reviewed = [r.path for t in reports for r in t.reports]
    assert sorted(reviewed) == files  # every file, none twice
    assert sum(t.skipped_reviewed + t.skipped_claimed for t in reports) > 0  # they met
    for rel in files:
        assert await traces.strength(location("r1", rel), "reviewed") == pytest.approx(1, rel=0.01)
    hot = await traces.strongest("found_todo", location("r1", ""), n=2)
    assert [(loc, round(s)) for loc, s in hot] == [
        (location("r1", "hot/many todos.py"), 7),
        (location("r1", "hot/one.todo.py"), 1),
    ]
    # the same walkers without traces review everything each
    blind = await asyncio.gather(*(walk(None, j, "x") for j in jobs[:2]))
    assert [len(t.reports) for t in blind] == [len(files), len(files)]
    assert blind[0].reports[0] == review_source(
        blind[0].reports[0].path, (tree / blind[0].reports[0].path).read_bytes()
    )


async def test_a_dead_walkers_claim_expires_and_its_file_is_reviewed(bus: Bus, tree: Path) -> None:
    traces = Traces(bus)
    stuck = "json/decoder.py"
    dead = await traces.claim(location("r2", stuck), ttl_s=2, holder="crashed-walker")
    assert dead is not None  # held, never released: as if its walker died mid-file
    report = await walk(traces, ReviewTree(root=str(tree), run="r2", revisit_timeout_s=30), "w")
    assert sorted(r.path for r in report.reports) == [rel for rel, _ in python_files(tree)]
    assert report.skipped_claimed >= 1


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_demo_compare_on_an_embedded_stack(tree: Path, tmp_path: Path) -> None:
    n = len(python_files(tree))
    async with EmbeddedStack(runtime="process", prefix="stigdemo") as stack:
        env = {**os.environ, "AGENTBUS_NATS_URL": stack.nats_url, "AGENTBUS_PREFIX": "stigdemo"}
        env["AGENTBUS_CREDS_FILE"] = str(stack.settings.creds_file)  # the operator's
        outs = {}
        for name, flags in [
            ("stig", ["--stigmergy"]),
            ("blind", ["--stigmergy", "--no-traces"]),
            ("all", ["--compare"]),
        ]:
            outs[name] = tmp_path / f"{name}.json"
            proc = await asyncio.create_subprocess_exec(
                *CLI,
                "demo",
                "review",
                str(tree),
                "--replicas",
                "3",
                "--runtime",
                "process",
                "--json",
                str(outs[name]),
                "--timeout-s",
                "120",
                *flags,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            stdout, _ = await asyncio.wait_for(proc.communicate(), 240)
            assert proc.returncode == 0, stdout.decode()
    stig = json.loads(outs["stig"].read_text())
    s = stig["summary"]
    assert s["mode"] == "stigmergy"
    assert s["coverage_ratio"] == 1.0
    assert s["files_reviewed"] == s["files_total"] == n
    assert s["duplicate_reviews"] == 0
    assert [f["path"] for f in stig["files"]] == [rel for rel, _ in python_files(tree)]
    hottest = s["hot_spots"][0]  # a found_todo strength: 7 deposited, decaying since
    assert hottest["path"] == "hot/many todos.py" and 6.5 < hottest["todos"] <= 7.0
    blind = json.loads(outs["blind"].read_text())["summary"]
    assert blind["coverage_ratio"] == 1.0
    assert blind["duplicate_reviews"] == 2 * n  # three walkers, each reviewed everything
    modes = {m["mode"]: m for m in json.loads(outs["all"].read_text())["comparison"]}
    assert list(modes) == ["queue", "stigmergy", "no-traces"]
    assert modes["queue"]["coverage_ratio"] == modes["stigmergy"]["coverage_ratio"] == 1.0
    assert modes["queue"]["duplicate_reviews"] == modes["stigmergy"]["duplicate_reviews"] == 0
    assert modes["no-traces"]["duplicate_reviews"] == 2 * n
    assert all(m["wall_s"] > 0 for m in modes.values())
