"""Fleet helpers of the dashboard browser tests: process-runtime deployments of the
``echo`` agent and of ``tests._harness.say_agent``, deployed until registered, and the
page-overflow probe of the phone-sized checks."""

from __future__ import annotations

import sys

from playwright.async_api import Page

from agentbus.client import Client
from agentbus.messages import Deployment
from tests._harness.browser import ROOT
from tests._harness.polling import eventually

QUICK_ENV = {"AGENTBUS_AGENT_HEARTBEAT_S": "0.5"}


def echo_deployment(name: str, replicas: int) -> Deployment:
    """``replicas`` of the ``echo`` agent (capability ``echo``) as processes."""
    return Deployment(
        name=name,
        command=[sys.executable, "-m", "agentbus.agents.echo"],
        capabilities=["echo"],
        replicas=replicas,
        env=QUICK_ENV,
    )


def say_deployment(name: str, capability: str, replicas: int = 1) -> Deployment:
    """``replicas`` of ``tests._harness.say_agent`` serving ``capability``, as processes."""
    return Deployment(
        name=name,
        command=[sys.executable, "-m", "tests._harness.say_agent"],
        capabilities=[capability],
        replicas=replicas,
        env={**QUICK_ENV, "PYTHONPATH": str(ROOT), "SAY_AGENT_CAPABILITY": capability},
    )


async def deployed(client: Client, deployment: Deployment, *, timeout_s: float = 60) -> None:
    """Deploy ``deployment`` (idempotent) and wait until its replicas are registered
    under each of its capabilities."""
    await client.deploy(deployment)
    name, wanted = deployment.name, deployment.replicas

    async def registered() -> bool:
        for capability in deployment.capabilities:
            agents = await client.agents(capability)
            if sum(a.deployment == name for a in agents) < wanted:
                return False
        return True

    await eventually(
        registered, timeout_s=timeout_s, every_s=0.2, what=f"{wanted} {name} replicas registered"
    )


async def echo_agents(client: Client, name: str, replicas: int) -> None:
    """Deploy ``replicas`` echo agents as ``name`` and wait until they are registered."""
    await deployed(client, echo_deployment(name, replicas))


async def horizontal_overflow_px(page: Page) -> int:
    """How far the page body is wider than the viewport (0: no horizontal scrolling)."""
    overflow = await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    return max(0, int(overflow))
