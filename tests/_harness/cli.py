"""Running ``agentbus`` commands in-process against a test bus, and the bus beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.settings import BusSettings

T = TypeVar("T")
runner = CliRunner()


def on_bus(settings: BusSettings, fn: Callable[[Bus], Awaitable[T]]) -> T:
    """Run ``fn`` on a connection (the contract made) from synchronous test code."""

    async def go() -> T:
        bus = await Bus.connect(settings, name="test")
        try:
            await bus.ensure()
            return await fn(bus)
        finally:
            await bus.close()

    return asyncio.run(go())


def invoke(settings: BusSettings, *args: str) -> tuple[int, str, str]:
    """``agentbus *args`` on ``settings``' URL and prefix: exit code, stdout, stderr."""
    argv = [*args, "--nats-url", settings.nats_url, "--prefix", settings.prefix]
    result = runner.invoke(app, argv)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr
