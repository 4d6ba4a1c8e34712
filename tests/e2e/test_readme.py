"""The README's code blocks, run as written against a real embedded stack.

Python blocks are written to files and run as processes (the agent, then the caller
next to it). Shell blocks run line by line: ``agentbus`` and ``curl`` commands against
the stack (``export NAME=$(agentbus ...)`` keeps the command's last line for the
``$NAME`` of later commands); the few commands that other tests or CI run (``./run``,
``just``) or that this machine lacks (the ``nats`` CLI) must be listed in
``COVERED_ELSEWHERE``, so a new command in the README fails here until it is run or
listed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK_RE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXPORT_RE = re.compile(r"^export (\w+)=\$\((.+)\)$")
COVERED_ELSEWHERE = {
    "./run": "the quickstart: CI runs ./run test; tests/e2e/test_demo.py runs the demo",
    "just": "just up/down: tests/e2e/test_compose.py",
    "nats": "the nats CLI is not installable here; its wire format: tests of nats.micro",
    "export": "the compose stack's operator creds: tests/e2e/test_compose.py",
    "AGENTBUS_AGENT_ID=summarizer-1": "the agent run by hand with `agentbus auth agent`: "
    "test_python_blocks_run_as_written",
}
SUBCOMMANDS_ELSEWHERE = {
    "audit": "needs the compose stack's PostgreSQL: tests/e2e/test_compose.py queries the "
    "audit table after a task, tests/cli/test_audit_cli.py runs each audit command",
}
"""``agentbus`` subcommands of the README run by other tests, not against this stack."""


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK_RE.findall(README.read_text()) if lang == language]


def commands(block: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (line.split("  #", 1)[0].split(" # ", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture
async def stack() -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(runtime="process", prefix=f"rd{uuid.uuid4().hex[:8]}") as s:
        yield s


@pytest.fixture
async def docker_stack(agent_image: str) -> AsyncIterator[EmbeddedStack]:
    """Agents as containers, as under ``just up`` (the README's fleet file names images)."""
    async with EmbeddedStack(runtime="docker", prefix=f"rd{uuid.uuid4().hex[:8]}") as s:
        yield s


def stack_env(stack: EmbeddedStack, cwd: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "AGENTBUS_NATS_URL": stack.nats_url, "AGENTBUS_PREFIX": stack.prefix}
    env["AGENTBUS_CREDS_FILE"] = str(stack.settings.creds_file)  # the CLI's (operator)
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    return env


async def run(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 90) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{text}"
    return text


def test_readme_has_the_blocks_this_test_runs() -> None:
    assert len(blocks("python")) == 3
    assert len(blocks("sh")) >= 2


async def test_python_blocks_run_as_written(stack: EmbeddedStack, tmp_path: Path) -> None:
    agent_code, caller_code, _ = blocks("python")
    (tmp_path / "summarizer.py").write_text(agent_code)
    (tmp_path / "summarize.py").write_text(caller_code)
    env = stack_env(stack, tmp_path)
    # Run by hand with its own identity, as the README says (`agentbus auth agent`).
    assert stack.credentials is not None
    minted = await run(
        [
            sys.executable, "-m", "agentbus.cli", "auth", "agent", "summarizer-1",
            "-c", "summarize", "--dir", str(stack.credentials.auth_dir),
        ],
        env,
        tmp_path,
    )  # fmt: skip
    agent_env = {
        **env,
        "AGENTBUS_AGENT_ID": "summarizer-1",
        "AGENTBUS_CREDS_FILE": minted.strip().splitlines()[-1],
    }
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "summarizer.py",
        cwd=tmp_path,
        env=agent_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = await run([sys.executable, "summarize.py"], env, tmp_path)
    finally:
        agent.terminate()
        await asyncio.wait_for(agent.wait(), 30)
    assert out.strip().splitlines()[-1] == "succeeded 1"  # Document(text="...") is one word
    assert agent.returncode == 0


async def test_shell_blocks_run_against_the_stack(docker_stack: EmbeddedStack) -> None:
    stack, repo = docker_stack, README.parent
    env = stack_env(stack)
    exported: dict[str, str] = {}
    ran = 0
    for block in blocks("sh"):
        for command in commands(block):
            export = EXPORT_RE.match(command)
            argv = shlex.split(export.group(2) if export else command)
            argv = [
                re.sub(r"\$(\w+)", lambda m: exported.get(m.group(1), env.get(m.group(1), "")), arg)
                for arg in argv
            ]
            if argv[0] in COVERED_ELSEWHERE:
                continue
            if argv[:3] == ["uv", "run", "agentbus"]:
                if argv[3] == "embedded":  # the stack this test already runs
                    continue
                if argv[3] in SUBCOMMANDS_ELSEWHERE:
                    continue
                out = await run([sys.executable, "-m", "agentbus.cli", *argv[3:]], env, repo)
                if export:
                    exported[export.group(1)] = out.strip().splitlines()[-1]
            elif argv[0] == "curl":
                gateway = stack.gateway_url.removeprefix("http://")
                argv = [arg.replace("localhost:8080", gateway) for arg in argv]
                out = await run(["curl", "--fail-with-body", *argv[1:]], env, repo)
                assert '"task_id"' in out, out
            else:
                pytest.fail(f"README command {command!r} is neither run here nor listed")
            ran += 1
    assert ran >= 6


async def test_events_block_runs_as_written(stack: EmbeddedStack, tmp_path: Path) -> None:
    watcher_code = blocks("python")[2]
    (tmp_path / "watcher.py").write_text(watcher_code)
    watcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "watcher.py",
        cwd=tmp_path,
        env=stack_env(stack, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert watcher.stdout is not None
    bus = await Bus.connect(stack.settings)
    try:

        async def subscribed() -> bool:
            consumers = await bus.js.consumers_info(bus.names.topics_stream)
            return any(c.name.startswith("topic-watcher-") for c in consumers)

        await eventually(subscribed, timeout_s=60, what="the watcher's subscription")
        await Client(bus).events.publish("review.file_reviewed", {"path": "a.py"}, key="a.py")
        line = await asyncio.wait_for(watcher.stdout.readline(), 60)
        assert line.decode().split() == ["review.file_reviewed", "a.py", "a.py"]
    finally:
        await bus.close()
        watcher.terminate()
        await asyncio.wait_for(watcher.wait(), 30)
