"""An agent with credentials minted from its deployment: what it may and may not do.

Every refusal is the server's: the agent's connection holds a user JWT whose
allow-lists ``agentbus.auth.agent_grants.agent_permissions`` built.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, KeyNotFoundError

from agentbus.auth.agent_grants import AgentGrant
from agentbus.auth.provision import provision_agent
from agentbus.bus import Bus
from agentbus.bus.blobs import get_blob, put_blob
from agentbus.bus.notices import Announcer
from agentbus.client import Client
from agentbus.errors import PermissionDeniedError
from agentbus.messages import Deployment, Subscription
from agentbus.runtime import Agent, TaskContext
from tests._harness.agents import agent_running, quick_settings
from tests._harness.auth import AuthServer, no_violations_since, refused
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.timeout(120)


def echo_deployment() -> Deployment:
    return Deployment(name="echo", capabilities=["echo"], publishes=["echo.done"])


async def test_agent_with_minted_credentials_serves_its_capability(
    secured: AuthServer, prefix: str
) -> None:
    operator = await Bus.connect(secured.operator(prefix))
    scheduler_bus = await Bus.connect(secured.service(prefix, "scheduler"))
    deployment = echo_deployment()
    agent = Agent("echo", settings=quick_settings("echo-0"))

    @agent.handler("echo")
    async def echo(ctx: TaskContext, value: Any) -> Any:
        return value

    try:
        await operator.ensure()
        async with running_scheduler(scheduler_bus, probe=operator):
            await provision_agent(operator, deployment, "echo-0")
            grant = AgentGrant(agent_id="echo-0", capabilities=("echo",), deployment="echo")
            async with agent_running(agent, secured.agent(prefix, grant)):
                client = Client(operator)
                submitted = await client.submit("echo", {"hello": "world"})
                record = await client.wait(submitted.task_id, timeout_s=20)
                assert record.status == "succeeded"
                assert await client.output(record) == {"hello": "world"}
    finally:
        await operator.close()
        await scheduler_bus.close()
    assert secured.server.violations == []


GRANT = AgentGrant(
    agent_id="echo-0",
    capabilities=("echo",),
    deployment="echo",
    publishes=("echo.done",),
    subscriptions={"watch": "shared"},
)


@pytest.fixture
async def fleet(secured: AuthServer, prefix: str) -> AsyncIterator[tuple[Bus, Bus]]:
    """(operator, agent ``echo-0``): the contract made, the agent's consumers provisioned,
    and a consumer of another capability (``cap-other``) that it must not read."""
    operator = await Bus.connect(secured.operator(prefix))
    await operator.ensure()
    deployment = Deployment(
        name="echo",
        capabilities=["echo"],
        publishes=["echo.done"],
        subscriptions=[Subscription(pattern="review.>", name="watch")],
    )
    await provision_agent(operator, deployment, "echo-0")
    await provision_agent(operator, Deployment(name="other", capabilities=["other"]), "other-0")
    agent = await Bus.connect(secured.agent(prefix, GRANT))
    try:
        yield operator, agent
    finally:
        await agent.close()
        await operator.close()


async def _stored(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_pulls_only_from_its_own_capability(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    operator, agent = fleet
    n = agent.names
    for cap in ("echo", "other"):
        await operator.js.publish(n.task_subject(cap), b"{}")
    mine = await agent.js.pull_subscribe_bind("cap-echo", stream=n.tasks_stream)
    msgs = await mine.fetch(1, timeout=5)
    assert len(msgs) == 1
    theirs = await agent.js.pull_subscribe_bind("cap-other", stream=n.tasks_stream)
    await refused(
        secured,
        f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-other",
        lambda: theirs.fetch(1, timeout=2),
    )


async def test_cannot_subscribe_to_everything_or_to_others_replies(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    _, agent = fleet
    own = await agent.nc.subscribe("_INBOX_agent_echo-0.x")
    await own.unsubscribe()
    for subject in (
        ">",
        f"{prefix}.>",
        f"{prefix}.tasks.other",
        "_INBOX.>",
        "_INBOX_agent_other-0.>",
    ):
        await refused(secured, subject, functools.partial(_subscribe, agent, subject))


async def _subscribe(bus: Bus, subject: str) -> None:
    await bus.nc.subscribe(subject)
    await bus.nc.flush()


async def test_reports_only_as_itself(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    operator, agent = fleet
    n = agent.names
    await agent.js.publish(f"{prefix}.results.echo.echo-0", b"{}")
    forged = f"{prefix}.results.echo.other-0"
    await refused(secured, forged, lambda: agent.js.publish(forged, b"{}", timeout=2))
    other_cap = f"{prefix}.results.other.echo-0"
    await refused(secured, other_cap, lambda: agent.js.publish(other_cap, b"{}", timeout=2))
    assert await _stored(operator, n.results_stream, forged) == 0


async def test_writes_only_its_own_registry_entry(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    operator, agent = fleet
    n = agent.names
    kv = await agent.kv(n.agents_bucket)
    await kv.put("echo-0", b"{}")
    other = f"$KV.{n.agents_bucket}.other-0"
    await refused(secured, other, lambda: kv.put("other-0", b"{}"))
    with pytest.raises(KeyNotFoundError):
        await (await operator.kv(n.agents_bucket)).get("other-0")


async def test_cannot_manage_streams_or_consumers(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    _, agent = fleet
    n = agent.names
    js = agent.js
    attempts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        (f"$JS.API.STREAM.DELETE.{n.tasks_stream}", lambda: js.delete_stream(n.tasks_stream)),
        (f"$JS.API.STREAM.PURGE.{n.tasks_stream}", lambda: js.purge_stream(n.tasks_stream)),
        (
            f"$JS.API.STREAM.CREATE.{prefix.upper()}_CAPTURE",
            lambda: js.add_stream(
                name=f"{prefix.upper()}_CAPTURE", subjects=["_INBOX_svc_scheduler.>"]
            ),
        ),
        (
            f"$JS.API.CONSUMER.DELETE.{n.tasks_stream}.cap-echo",
            lambda: js.delete_consumer(n.tasks_stream, "cap-echo"),
        ),
        (
            f"$JS.API.CONSUMER.CREATE.{n.tasks_stream}.cap-echo.{prefix}.tasks.echo",
            lambda: js.add_consumer(
                n.tasks_stream,
                ConsumerConfig(
                    name="cap-echo", durable_name="cap-echo", filter_subject=f"{prefix}.tasks.echo"
                ),
            ),
        ),
    ]
    for subject, action in attempts:
        await refused(secured, subject, action)


async def test_publishes_only_declared_topics_and_mail_as_itself(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    operator, agent = fleet
    n = agent.names
    await agent.js.publish(n.topic_subject("echo.done"), b"{}")
    undeclared = n.topic_subject("review.done")
    await refused(secured, undeclared, lambda: agent.js.publish(undeclared, b"{}", timeout=2))
    await agent.js.publish(f"{prefix}.inbox.other-0.echo-0", b"{}")
    spoofed = f"{prefix}.inbox.other-0.mallory-0"
    await refused(secured, spoofed, lambda: agent.js.publish(spoofed, b"{}", timeout=2))
    assert await _stored(operator, n.topics_stream, undeclared) == 0


async def test_reads_only_its_own_topic_consumers_and_no_other_bucket(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    operator, agent = fleet
    n = agent.names
    await operator.js.publish(n.topic_subject("review.x"), b"{}")
    watch = await agent.js.pull_subscribe_bind("topic-echo-watch", stream=n.topics_stream)
    assert len(await watch.fetch(1, timeout=5)) == 1
    await (await operator.kv(n.tasks_bucket)).put("secret-task", b"{}")
    direct = f"$JS.API.DIRECT.GET.KV_{n.tasks_bucket}.$KV.{n.tasks_bucket}.secret-task"
    await refused(secured, direct, lambda: agent.nc.request(direct, b"", timeout=2))
    placements = f"$JS.API.STREAM.INFO.KV_{n.placements_bucket}"
    await refused(secured, placements, lambda: agent.js.key_value(n.placements_bucket))


async def test_a_refused_request_says_permission_denied_not_timeout(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    _, agent = fleet
    with pytest.raises(PermissionDeniedError, match=r"scheduler\.deploy"):
        await Client(agent).deploy(Deployment(name="x", command=["true"]))


async def test_cannot_roll_up_an_object_store_but_writes_objects(
    secured: AuthServer, prefix: str, fleet: tuple[Bus, Bus]
) -> None:
    """Subject rights allow ``$O.<bucket>.>``; the streams refuse ``Nats-Rollup`` itself."""
    operator, agent = fleet
    n = agent.names
    seen = len(secured.server.violations)
    for bucket in (n.blobs_bucket, n.checkpoint_blobs_bucket):
        kept = await put_blob(operator, "kept", b"before", bucket=bucket)
        with pytest.raises(APIError, match="rollup not permitted"):
            await agent.js.publish(f"$O.{bucket}.M.x", b"{}", headers={"Nats-Rollup": "all"})
        assert await get_blob(agent, kept) == b"before"
        mine = await put_blob(agent, "mine", os.urandom(300 * 1024), bucket=bucket)
        assert hashlib.sha256(await get_blob(agent, mine)).hexdigest() == mine.sha256
        assert (await (await operator.object_store(bucket)).get("kept")).data == b"before"
    assert no_violations_since(secured, seen) == []


async def test_passes_on_a_ready_notice_nobody_hears_as_a_backlog_notice(
    secured: AuthServer, fleet: tuple[Bus, Bus]
) -> None:
    """An agent that cannot take a notice announces it again; unheard, it goes out on
    the backlog subject, which the agent's permissions must allow."""
    operator, agent = fleet
    heard: list[bytes] = []

    async def hear(msg: Any) -> None:
        heard.append(msg.data)

    sub = await operator.nc.subscribe(agent.names.backlog_subject("echo"), cb=hear)
    seen = len(secured.server.violations)
    announcer = Announcer(agent)
    try:
        await announcer.announce("echo", band=0, count=2)
        await eventually(lambda: announcer.backlogged >= 1, timeout_s=5, what="backlog notice")
        await eventually(lambda: len(heard) >= 1, timeout_s=5, what="backlog notice heard")
    finally:
        await announcer.close()
        await sub.unsubscribe()
    assert no_violations_since(secured, seen) == []
