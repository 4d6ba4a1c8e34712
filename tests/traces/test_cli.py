"""``agentbus traces``: the commands run as a user runs them, against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.settings import BusSettings
from agentbus.traces import Traces
from tests._harness.polling import eventually

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "agentbus.cli", "traces"]


def env(settings: BusSettings) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTBUS_NATS_URL": settings.nats_url,
        "AGENTBUS_PREFIX": settings.prefix,
    }


async def cli(settings: BusSettings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(settings: BusSettings, *args: str) -> Any:
    code, out, err = await cli(settings, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_deposit_show_top_kinds(bus: Bus, bus_settings: BusSettings) -> None:
    traces = Traces(bus)
    for kind in ("found_todo", "reviewed"):  # decay is negligible however slow the CLI is
        await traces.define(kind, half_life_s=1e6)
    code, out, err = await cli(bus_settings, "deposit", "src/a b.py", "found_todo", "3")
    assert code == 0, err
    assert "found_todo at src/a b.py: 3" in out
    await traces.deposit("src/c.py", "found_todo", 5)
    await traces.deposit("docs/d.md", "found_todo", 9)
    await traces.deposit("src/a b.py", "reviewed", 1)
    claim = await traces.claim("src/a b.py", 30, holder="agent-7")
    assert claim is not None

    shown = await cli_json(bus_settings, "show", "src/a b.py")
    assert shown["location"] == "src/a b.py"
    assert shown["traces"]["found_todo"] == pytest.approx(3.0, rel=1e-3)
    assert shown["traces"]["reviewed"] == pytest.approx(1.0, rel=1e-3)
    assert shown["claim"]["holder"] == "agent-7"

    ranked = await cli_json(bus_settings, "top", "found_todo", "--prefix", "src/", "-n", "5")
    assert [r["location"] for r in ranked] == ["src/c.py", "src/a b.py"]
    assert ranked[0]["strength"] == pytest.approx(5.0, rel=1e-3)
    code, out, _ = await cli(bus_settings, "top", "found_todo")
    assert code == 0
    assert out.index("docs/d.md") < out.index("src/c.py") < out.index("src/a b.py")

    kinds = await cli_json(bus_settings, "kinds")
    assert [k["kind"] for k in kinds] == ["found_todo", "reviewed"]
    assert kinds[0]["half_life_s"] == 1e6

    code, out, _ = await cli(bus_settings, "show", "nowhere/at all")
    assert code == 0
    await claim.release()


async def test_watch_prints_live_deposits(bus: Bus, bus_settings: BusSettings) -> None:
    traces = Traces(bus, half_life_s=1e6)  # no decay to speak of, however slow the CLI
    await traces.deposit("src/ready", "mark", 1)
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "watch",
        "src/*",
        "--json",
        "--count",
        "2",
        env=env(bus_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        # deposits before the watch subscribed are not reported: keep depositing until
        # one is, then the next matching deposit must be the second line
        async def started() -> bool:
            await traces.deposit("src/ready", "mark", 1)
            await traces.deposit("docs/ignored", "mark", 1)
            await asyncio.sleep(0.3)
            return bool(lines)

        await eventually(started, timeout_s=30, what="watch running")
        await traces.deposit("src/last.py", "mark", 4)
        await asyncio.wait_for(proc.wait(), 30)
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert len(lines) == 2
    assert lines[0]["location"] == "src/ready"
    assert lines[1]["location"] == "src/last.py"
    assert lines[1]["amount"] == 4.0
    assert lines[1]["strength"] == pytest.approx(4.0, rel=1e-3)
    assert lines[1]["kind"] == "mark"


async def test_bad_input_exits_2(bus_settings: BusSettings, bus: Bus) -> None:
    code, _, err = await cli(bus_settings, "deposit", "x", "k", "--", "-1")
    assert code == 2, err
    assert "amount" in err
    code, _, err = await cli(bus_settings, "top", "Not A Kind")
    assert code == 2, err
