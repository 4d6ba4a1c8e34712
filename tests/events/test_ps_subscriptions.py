"""``agentbus ps`` shows who listens to what: declared subscriptions joined with the
live consumers of ``<P>_TOPICS``, and live ones nobody declared."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.events import EventContext
from agentbus.fleet.spec import parse_fleet
from agentbus.messages import encode
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats

FLEET = """
deployments:
  reviewers:
    command: python -m x
    replicas: 2
    subscriptions:
      - {pattern: "review.>", name: on_review}
      - {pattern: "build.done", mode: each}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout


def agent(agent_id: str, deployment: str | None) -> Agent:
    a = Agent("loose", settings=AgentSettings(agent_id=agent_id, deployment=deployment))

    @a.on_event("review.>")
    async def on_review(ctx: EventContext, payload: Any) -> None:
        return None

    return a


@pytest.mark.timeout(60)
async def test_ps_lists_declared_and_live_subscriptions(
    bus: Bus, nats_url: str, prefix: str
) -> None:
    (d,) = parse_fleet(FLEET).deployments
    kv = await bus.kv(bus.names.deployments_bucket)
    await kv.put(d.name, encode(d))
    stop = asyncio.Event()
    agents = [agent("reviewers-0", "reviewers"), agent("loose-1", None)]
    runs = [asyncio.create_task(a.run(bus, stop)) for a in agents]
    try:
        await eventually(lambda: _bound(agents), timeout_s=20, what="both agents subscribed")
        conn = ("--nats-url", nats_url, "--prefix", prefix)
        code, out = await asyncio.to_thread(invoke, "ps", "--subscriptions", "--json", *conn)
        assert code == 0, out
        rows = {(r["owner"], r["pattern"]): r for r in json.loads(out)}
        code, table = await asyncio.to_thread(invoke, "ps", "--subscriptions", *conn)
    finally:
        stop.set()
        await asyncio.gather(*runs)
    assert set(rows) == {
        ("reviewers", "review.>"),
        ("reviewers", "build.done"),
        ("loose", "review.>"),
    }
    declared = rows[("reviewers", "review.>")]
    assert (declared["declared"], declared["consumers"], declared["name"]) == (True, 9, "on_review")
    assert rows[("reviewers", "build.done")]["consumers"] == 0  # declared, nobody listens yet
    loose = rows[("loose", "review.>")]
    assert (loose["declared"], loose["mode"], loose["consumers"]) == (False, "shared", 9)
    assert "review.>" in table and "undeclared" in table


async def _bound(agents: list[Agent]) -> bool:
    return all(a.subscriptions is not None and a.subscriptions._loops for a in agents)


@pytest.mark.timeout(60)
async def test_a_later_replica_keeps_the_start_of_existing_consumers(bus: Bus) -> None:
    def replica(agent_id: str, start: Any) -> Agent:
        a = Agent("keeper", settings=AgentSettings(agent_id=agent_id, deployment="keep"))

        @a.on_event("audit.>", start=start)
        async def on_audit(ctx: EventContext, payload: Any) -> None:
            return None

        return a

    stop = asyncio.Event()
    first, later = replica("keep-0", "all"), replica("keep-1", "new")
    runs = [asyncio.create_task(first.run(bus, stop))]
    try:
        await eventually(lambda: _bound([first]), timeout_s=20, what="first subscribed")
        runs.append(asyncio.create_task(later.run(bus, stop)))
        await eventually(lambda: _bound([later]), timeout_s=20, what="later subscribed")
    finally:
        stop.set()
        await asyncio.gather(*runs)
    info = await bus.js.consumer_info(bus.names.topics_stream, "topic-keep-on_audit-k5")
    policy = info.config.deliver_policy  # nats-py leaves the server's string here
    assert getattr(policy, "value", policy) == "all"
