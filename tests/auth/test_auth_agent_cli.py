"""``agentbus auth agent``: an agent started by hand, scoped like a supervised replica."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.client import Client
from agentbus.messages import Deployment
from agentbus.runtime import Agent, TaskContext
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, quick_settings
from tests._harness.auth import AuthServer, refused
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.timeout(120)


async def test_hand_started_agent_gets_deployment_scoped_credentials(
    secured: AuthServer, prefix: str
) -> None:
    operator_settings = secured.operator(prefix)
    operator = await Bus.connect(operator_settings)
    await operator.ensure()
    scheduler = await Bus.connect(secured.service(prefix, "scheduler"))
    agent = Agent("echo", settings=quick_settings("echo-7"))

    @agent.handler("echo")
    async def echo(ctx: TaskContext, value: Any) -> Any:
        return value

    try:
        async with running_scheduler(scheduler, probe=operator):
            client = Client(operator)
            await client.deploy(
                Deployment(name="echo", command=["true"], capabilities=["echo"], replicas=0)
            )
            argv = [
                "auth", "agent", "echo-7", "--deployment", "echo",
                "--dir", str(secured.auth.path),
                "--nats-url", secured.url, "--prefix", prefix,
            ]  # fmt: skip
            env = {"AGENTBUS_CREDS_FILE": str(operator_settings.creds_file)}
            result = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)
            assert result.exit_code == 0, result.output
            creds = result.stdout.strip()
            mine = BusSettings(nats_url=secured.url, prefix=prefix, creds_file=creds)
            async with agent_running(agent, mine):
                task = await client.submit("echo", "by hand")
                record = await client.wait(task.task_id, timeout_s=30)
                assert record.status == "succeeded"
            hand = await Bus.connect(mine)
            forged = f"{prefix}.results.echo.echo-0"
            await refused(secured, forged, lambda: hand.js.publish(forged, b"{}", timeout=2))
            await hand.close()
    finally:
        await operator.close()
        await scheduler.close()
