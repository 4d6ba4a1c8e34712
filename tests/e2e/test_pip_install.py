"""The library installs with pip outside the workspace, and an agent written against it runs.

Builds the ``agentbus-runtime`` wheel and sdist with ``uv build``, checks them with
``twine check``, installs the wheel into a fresh virtual environment from the local
wheelhouse (``.wheels/``, filled by ``just images``: no index needed), then runs
``examples/pip-agent/shouter.py`` with that environment's Python against a real
nats-server and scheduler, and submits to it with that environment's ``agentbus``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from agentbus.bus import Bus
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".wheels"
EXAMPLE = ROOT / "examples/pip-agent/shouter.py"


def run(*argv: str | Path, timeout_s: float = 180) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the built wheel installed; its bin directory."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: run `bash scripts/setup.sh`")
    if not any(WHEELHOUSE.glob("msgspec-*.whl")):
        pytest.fail(f"no wheelhouse in {WHEELHOUSE}: run `just images` (just test does)")
    tmp = tmp_path_factory.mktemp("pip")
    dist = tmp / "dist"
    run(uv, "build", "--package", "agentbus-runtime", "-o", dist, "--quiet")
    built = sorted(dist.glob("agentbus_runtime-*"))
    assert [p.suffix for p in built] == [".whl", ".gz"], built  # wheel and sdist
    run(sys.executable, "-m", "twine", "check", "--strict", *built)
    env = tmp / "venv"
    venv.create(env, with_pip=True)
    wheel = built[0]
    run(
        env / "bin/python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        WHEELHOUSE,
        wheel,
    )
    return env / "bin"


def test_the_installed_command_runs(installed: Path) -> None:
    assert run(installed / "agentbus", "--version").startswith("agentbus ")
    code = "import agentbus, sys; print(agentbus.__file__)"
    assert str(installed.parent) in run(installed / "python", "-c", code)


async def test_an_agent_outside_the_workspace_serves_tasks(installed: Path, bus: Bus) -> None:
    env = {
        "AGENTBUS_NATS_URL": bus.settings.nats_url,
        "AGENTBUS_PREFIX": bus.names.prefix,
        "PATH": "/usr/bin:/bin",
    }
    async with running_scheduler(bus):
        agent = await asyncio.create_subprocess_exec(
            installed / "python",
            EXAMPLE,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            submit = await asyncio.create_subprocess_exec(
                installed / "agentbus",
                "submit",
                "shout",
                '{"text": "hi"}',
                "--wait",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(submit.communicate(), 120)
            assert submit.returncode == 0, out.decode()
            assert '"HI"' in out.decode()
        finally:
            agent.terminate()
            await asyncio.wait_for(agent.wait(), 30)
