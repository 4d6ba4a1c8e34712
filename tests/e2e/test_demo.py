"""The review demo end to end, checked file by file against metrics computed here."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tokenize
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agentbus.agents.reviewer import FILE_REVIEWED, FileReport, FileReviewed
from agentbus.agents.summarizer import (
    SUMMARY_ASK,
    ReviewTotals,
    Summaries,
    SummaryQuery,
    build,
)
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.demo.live import LiveTotals
from agentbus.demo.review import _report, python_files
from agentbus.embedded import EmbeddedStack, free_port
from agentbus.errors import AgentBusError, UnavailableError
from agentbus.events import publish_event
from agentbus.messages import ErrorInfo, TaskRecord
from agentbus.settings import AgentSettings
from tests._harness.polling import eventually
from tests._harness.work_stream import running

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
CLI = [sys.executable, "-m", "agentbus.cli"]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def expected_report(path: str, content: bytes) -> dict[str, Any]:
    """The metrics of the spec, computed independently of the reviewer agent."""
    try:
        source = content.decode("utf-8")
        tree = ast.parse(source)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return {"path": path, "status": "error"}
    nodes = list(ast.walk(tree))
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {
        "path": path,
        "status": "ok",
        "lines": len(source.splitlines()),
        "functions": sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in nodes),
        "classes": sum(isinstance(n, ast.ClassDef) for n in nodes),
        "todos": sum(
            t.type == tokenize.COMMENT and any(m in t.string for m in ("TODO", "FIXME", "XXX"))
            for t in tokens
        ),
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The stdlib ``json`` package plus bad files, a site-packages folder and symlinks."""
    root = tmp_path / "tree"
    shutil.copytree(STDLIB / "json", root / "json", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "bad_encoding.py").write_bytes(b"x = '\xff\xfe caf\xe9'\n")
    (root / "bad_syntax.py").write_text("def broken(:\n    pass  # TODO never counted\n")
    (root / "todo.py").write_text("# TODO: one\nx = 1  # FIXME two\ns = '# TODO not a comment'\n")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "skipped.py").write_text("def skipped(): pass\n")
    (root / "linked.py").symlink_to(root / "json" / "encoder.py")
    (root / "linked_dir").symlink_to(root / "json", target_is_directory=True)
    (root / "notes.txt").write_text("not python\n")
    return root


def expected_files(root: Path) -> list[dict[str, Any]]:
    rels = sorted(
        [f"json/{p.name}" for p in (root / "json").glob("*.py")]
        + ["bad_encoding.py", "bad_syntax.py", "todo.py"]
    )
    return [expected_report(rel, (root / rel).read_bytes()) for rel in rels]


def expected_totals(root: Path) -> dict[str, int]:
    """The report's figures summed over the expected files (errors count no figure)."""
    files = expected_files(root)
    ok = [f for f in files if f["status"] == "ok"]
    sums = {k: sum(f[k] for f in ok) for k in ("lines", "functions", "classes", "todos")}
    return {"files": len(files), "ok": len(ok), "errors": len(files) - len(ok), **sums}


def check_report(doc: dict[str, Any], root: Path) -> None:
    expected = expected_files(root)
    got = doc["files"]
    assert [f["path"] for f in got] == [e["path"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        if e["status"] == "error":
            assert g["status"] == "error", g
            assert g["error"], g
            assert set(g) == {"path", "status", "error"}, g
        else:
            assert g == e
    assert doc["summary"]["files"] == len(expected)
    assert doc["summary"]["errors"] == 2
    assert doc["summary"]["ok"] == len(expected) - 2
    assert doc["summary"]["wall_s"] > 0
    assert doc["summary"]["totals"] == expected_totals(root)
    # the summarizer's totals, from the reviewers' events, equal the direct computation
    assert doc["summary"]["summarizer_totals"] == expected_totals(root)


def test_python_files_skips_site_packages_and_symlinks(tree: Path) -> None:
    rels = [rel for rel, _ in python_files(tree)]
    assert rels == [e["path"] for e in expected_files(tree)]
    assert "todo.py" in rels


async def test_failed_task_becomes_an_error_entry() -> None:
    now = datetime.now(UTC)
    record = TaskRecord(
        task_id="t",
        capability="review",
        status="dead",
        created_at=now,
        updated_at=now,
        error=ErrorInfo(error_type="RuntimeError", message="agent crashed\nbadly"),
    )
    report = await _report(None, record, "a/b.py")  # type: ignore[arg-type]
    assert report.path == "a/b.py"
    assert report.status == "error"
    assert report.error == "task dead: agent crashed badly"
    assert report.lines is None


async def test_demo_on_an_embedded_stack(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    async with EmbeddedStack(runtime="process", prefix="e2edemo") as stack:
        env = {**os.environ, "AGENTBUS_NATS_URL": stack.nats_url, "AGENTBUS_PREFIX": "e2edemo"}
        env["AGENTBUS_CREDS_FILE"] = str(stack.settings.creds_file)  # the operator's
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "demo",
            "review",
            str(tree),
            "--replicas",
            "2",
            "--runtime",
            "process",
            "--json",
            str(out),
            "--timeout-s",
            "120",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 180)
        text = stdout.decode()
        assert proc.returncode == 0, text
        assert "stack: existing" in text
        n = len(expected_files(tree))
        assert f"files: {n}  ok: {n - 2}  errors: 2" in text
        assert "summarizer: files" in text  # the live totals beside the bar
        assert "summarizer totals match the direct computation" in text
        check_report(json.loads(out.read_text()), tree)
        # the deployments are gone and their agents stopped
        client = Client(await Bus.connect(stack.settings))
        try:
            assert [a for a in await client.agents("review") if a.deployment == "reviewer"] == []
            assert await client.deployments() == {}
        finally:
            await client.close()


def test_demo_starts_its_own_stack(tree: Path, tmp_path: Path, agentbus_home: Path) -> None:
    out = tmp_path / "report.json"
    env = {**os.environ, "AGENTBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    env["AGENTBUS_HOME"] = str(agentbus_home)
    proc = subprocess.Popen(
        [
            *CLI,
            "demo",
            "review",
            str(tree),
            "--replicas",
            "1",
            "--runtime",
            "process",
            "--json",
            str(out),
            "--timeout-s",
            "120",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # Ctrl-C stops the demo's embedded stack
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, text
    assert "starting an embedded stack" in text
    assert "runtime: process (requested with --runtime process)" in text
    check_report(json.loads(out.read_text()), tree)


def _event(run: str, path: str, lines: int, *, ok: bool = True) -> FileReviewed:
    if not ok:
        return FileReviewed.of(run, FileReport(path=path, status="error", error="bad"))
    report = FileReport(path=path, status="ok", lines=lines, functions=1, classes=0, todos=2)
    return FileReviewed.of(run, report)


def test_summaries_count_a_path_once_per_run() -> None:
    held = Summaries(max_runs=2)
    assert held.add(_event("r1", "a.py", 10))
    assert not held.add(_event("r1", "a.py", 10))  # redelivered: no figure changes
    assert held.add(_event("r1", "b.py", 5, ok=False))
    assert held.add(_event("r2", "a.py", 7))  # another run counts it again
    r1 = held.totals("r1")
    assert r1.figures() == {
        "files": 2,
        "ok": 1,
        "errors": 1,
        "lines": 10,
        "functions": 1,
        "classes": 0,
        "todos": 2,
    }
    assert r1.duplicates == 1
    assert held.totals("r2").lines == 7
    held.add(_event("r3", "a.py", 1))  # the oldest run is dropped past max_runs
    assert held.totals("r1") == ReviewTotals(run="r1")


async def _totals(client: Client, run: str) -> ReviewTotals | None:
    try:
        reply = await client.ask(SUMMARY_ASK, SummaryQuery(run=run), reply_type=ReviewTotals)
    except UnavailableError:
        return None
    assert isinstance(reply, ReviewTotals)
    return reply


@pytest.mark.nats
@pytest.mark.timeout(60)
async def test_summarizer_agent_counts_each_file_once(bus: Bus) -> None:
    settings = AgentSettings(agent_id="summarizer-1", heartbeat_s=0.5, fetch_timeout_s=0.5)
    client = Client(bus)
    async with running(build(settings), bus):
        await eventually(lambda: _totals(client, "run-1"), what="the summarizer answers")
        events = [_event("run-1", f"f{i}.py", i) for i in range(20)]
        for e in [*events, events[3], events[7]]:  # two republished: new event ids
            await publish_event(bus, FILE_REVIEWED, e, key=e.path, source="test")

        async def all_in() -> ReviewTotals | None:
            totals = await _totals(client, "run-1")
            return totals if totals and totals.files + totals.duplicates == 22 else None

        totals = await eventually(all_in, timeout_s=30, what="22 events handled")
        # the demo's end check: equal totals pass, a file missing from the events fails
        live = LiveTotals(client, image="unused", kinds={"process"})
        live.run = "run-1"
        reports = [_report_of(e) for e in events]
        quiet = Console(file=io.StringIO())
        assert (await live.check(reports, quiet, timeout_s=5)).figures() == totals.figures()
        extra = FileReport(path="g.py", status="ok", lines=1, functions=0, classes=0, todos=0)
        with pytest.raises(AgentBusError, match="files 20 != 21, ok 20 != 21, lines 190 != 191"):
            await live.check([*reports, extra], quiet, timeout_s=0.5)
    assert totals.figures()["files"] == 20
    assert totals.lines == sum(range(20))
    assert totals.todos == 40
    assert totals.duplicates == 2


def _report_of(e: FileReviewed) -> FileReport:
    return FileReport(
        path=e.path,
        status=e.status,
        lines=e.lines,
        functions=e.functions,
        classes=e.classes,
        todos=e.todos,
    )
