"""Each service's own identity: what it needs works, the rest the server refuses.

The tables are ``agentbus.auth.permissions.service_permissions`` (``docs/protocol.md``,
"Permissions"); each test pairs an action the service needs with ones it must not do.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.js.api import ConsumerConfig

from agentbus.bus import Bus
from agentbus.bus.contract import raise_replicas
from agentbus.client import Client
from agentbus.messages import AgentEvent, Deployment, utcnow
from agentbus.runtime.delivery import task_consumer_config
from agentbus.traces import Traces
from tests._harness.archiver import archived_seqs, archiver_settings, running_archiver
from tests._harness.auth import AuthServer, no_violations_since, refused
from tests._harness.gateway import start_gateway, stop_gateway
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.sse import count, publish_task_event, read_sse

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def operator(secured: AuthServer, prefix: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(secured.operator(prefix))
    await bus.ensure()
    yield bus
    await bus.close()


async def _as(secured: AuthServer, prefix: str, service: str, node_id: str | None = None) -> Bus:
    return await Bus.connect(secured.service(prefix, service, node_id=node_id))


async def _pull(bus: Bus, subject: str) -> None:
    await bus.nc.request(subject, b"1", timeout=2)


async def _kv_put(bus: Bus, bucket: str, key: str) -> None:
    await bus.js.publish(f"$KV.{bucket}.{key}", b"{}", timeout=2)


async def test_gateway_reads_records_and_placements_but_writes_neither(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    gateway = await _as(secured, prefix, "gateway")
    n = gateway.names
    try:
        await (await operator.kv(n.tasks_bucket)).put("t1", b"{}")
        assert (await (await gateway.kv(n.tasks_bucket)).get("t1")).value == b"{}"
        await gateway.js.publish(n.topic_subject("review.done"), b"{}")
        await (await operator.kv(n.placements_bucket)).put("echo.0", b"{}")
        assert (await (await gateway.kv(n.placements_bucket)).get("echo.0")).value == b"{}"
        placement = f"$KV.{n.placements_bucket}.echo.0"
        await refused(secured, placement, lambda: _kv_put(gateway, n.placements_bucket, "echo.0"))
        deployment = f"$KV.{n.deployments_bucket}.echo"
        await refused(secured, deployment, lambda: _kv_put(gateway, n.deployments_bucket, "echo"))
        token = f"$KV.{n.tokens_bucket}.forged"
        await refused(secured, token, lambda: _kv_put(gateway, n.tokens_bucket, "forged"))
        await refused(
            secured,
            f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-echo",
            lambda: gateway.nc.request(
                f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-echo", b"1", timeout=2
            ),
        )
    finally:
        await gateway.close()


async def test_gateway_serves_the_dashboard_reads_but_takes_no_ones_work(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    """Overview, deployments, traces and logs on the gateway's identity, with no
    violation; pulling from or deleting the consumers of agents stays refused."""
    gateway = await _as(secured, prefix, "gateway")
    n = gateway.names
    scheduler = await _as(secured, prefix, "scheduler")
    await operator.js.add_consumer(n.tasks_stream, task_consumer_config(n, "echo", 0, lease_s=30))
    await Traces(operator).deposit("src/a.py", "found_todo", 3)
    await operator.js.publish(n.log_subject("echo-0"), b"hello")
    try:
        async with running_scheduler(scheduler, probe=operator):
            await Client(operator).deploy(Deployment(name="echo", command=["true"]))
            gw = await start_gateway(gateway, token_bus=operator)
            try:
                seen = len(secured.server.violations)
                for path in ("/v1/overview", "/v1/deployments", "/v1/traces/kinds"):
                    assert (await gw.http.get(path)).status_code == 200, path
                ranked = await gw.http.get("/v1/traces/found_todo/strongest")
                assert ranked.json()["locations"][0]["location"] == "src/a.py"
                lines = await read_sse(gw.http, "/v1/logs/echo-0", until=count(1))
                assert msgspec.json.decode(lines[0].data)["line"] == "hello"
                assert no_violations_since(secured, seen) == []
            finally:
                await stop_gateway(gw)
        for stream, consumer in ((n.tasks_stream, "cap-echo"), (n.topics_stream, "topic-x")):
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
            await refused(secured, subject, functools.partial(_pull, gateway, subject))
        delete = f"$JS.API.CONSUMER.DELETE.{n.tasks_stream}.cap-echo"
        await refused(
            secured, delete, lambda: gateway.js.delete_consumer(n.tasks_stream, "cap-echo")
        )
    finally:
        await scheduler.close()
        await gateway.close()


async def test_gateway_streams_events_over_sse_on_its_own_identity(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    """Its ordered readers (ephemeral consumers on the events stream) are allowed; a
    consumer on the tasks stream is not."""
    gateway = await _as(secured, prefix, "gateway")
    n = gateway.names
    gw = await start_gateway(gateway, token_bus=operator)
    try:
        seen = len(secured.server.violations)
        await publish_task_event(operator, "t1", "queued")
        events = await read_sse(gw.http, "/v1/events", params={"since": "0"}, until=count(1))
        assert [e.event for e in events] == ["task.queued"]
        assert no_violations_since(secured, seen) == []
        consumer = ConsumerConfig(name="spy", filter_subject=n.tasks_all())
        await refused(
            secured,
            f"$JS.API.CONSUMER.CREATE.{n.tasks_stream}.spy.{n.tasks_all()}",
            lambda: gateway.js.add_consumer(n.tasks_stream, consumer, timeout=2),
        )
    finally:
        await stop_gateway(gw)
        await gateway.close()


async def test_checkpoint_service_writes_checkpoints_but_cannot_consume_tasks(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    checkpoint = await _as(secured, prefix, "checkpoint")
    n = checkpoint.names
    try:
        await (await checkpoint.kv(n.checkpoints_bucket)).put("a.b", b"{}")
        await refused(
            secured,
            f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-echo",
            lambda: checkpoint.nc.request(
                f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-echo", b"1", timeout=2
            ),
        )
        await refused(
            secured,
            f"$JS.API.STREAM.INFO.KV_{n.tasks_bucket}",
            lambda: checkpoint.js.key_value(n.tasks_bucket),
        )
        task = f"{prefix}.tasks.echo"
        await refused(secured, task, lambda: checkpoint.js.publish(task, b"{}", timeout=2))
    finally:
        await checkpoint.close()


async def test_registry_writes_registry_entries_only(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    registry = await _as(secured, prefix, "registry")
    n = registry.names
    try:
        await (await registry.kv(n.agents_bucket)).put("a-0", b"{}")
        await (await registry.kv(n.nodes_bucket)).put("n1", b"{}")
        placement = f"$KV.{n.placements_bucket}.echo.0"
        await refused(secured, placement, lambda: _kv_put(registry, n.placements_bucket, "echo.0"))
        task = f"{prefix}.tasks.echo"
        await refused(secured, task, lambda: registry.js.publish(task, b"{}", timeout=2))
    finally:
        await registry.close()


async def test_supervisor_reads_placements_and_serves_only_its_node(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    supervisor = await _as(secured, prefix, "supervisor", node_id="n1")
    n = supervisor.names
    try:
        await (await operator.kv(n.placements_bucket)).put("echo.0", b"{}")
        got = await (await supervisor.kv(n.placements_bucket)).get("echo.0")
        assert got.value == b"{}"
        await (await supervisor.kv(n.nodes_bucket)).put("n1", b"{}")
        mine = await supervisor.nc.subscribe(f"{prefix}.supervisor.n1.status")
        await mine.unsubscribe()
        placement = f"$KV.{n.placements_bucket}.echo.1"
        await refused(
            secured, placement, lambda: _kv_put(supervisor, n.placements_bucket, "echo.1")
        )
        deployment = f"$KV.{n.deployments_bucket}.echo"
        await refused(
            secured, deployment, lambda: _kv_put(supervisor, n.deployments_bucket, "echo")
        )
        other_node = f"{prefix}.supervisor.n2.status"

        async def listen() -> None:
            await supervisor.nc.subscribe(other_node)
            await supervisor.nc.flush()

        await refused(secured, other_node, listen)
    finally:
        await supervisor.close()


async def test_scheduler_cannot_touch_checkpoints_keys_tokens_or_delete_streams(
    secured: AuthServer, prefix: str, operator: Bus
) -> None:
    scheduler = await _as(secured, prefix, "scheduler")
    n = scheduler.names
    try:
        await (await scheduler.kv(n.placements_bucket)).put("echo.0", b"{}")
        for bucket, key in (
            (n.checkpoints_bucket, "a.b"),
            (n.secrets_keys_bucket, "public"),
            (n.tokens_bucket, "forged"),
        ):
            await refused(
                secured, f"$KV.{bucket}.{key}", functools.partial(_kv_put, scheduler, bucket, key)
            )
        await refused(
            secured,
            f"$JS.API.STREAM.DELETE.{n.tasks_stream}",
            lambda: scheduler.js.delete_stream(n.tasks_stream),
        )
    finally:
        await scheduler.close()


async def test_archiver_reads_events_through_its_consumer_and_nothing_else(
    secured: AuthServer, prefix: str, operator: Bus, audit_database_url: str
) -> None:
    archiver = await _as(secured, prefix, "archiver")
    n = archiver.names
    try:
        await operator.publish_event("agent", "joined", AgentEvent(agent_id="a-0", kind="joined",
                                                                   at=utcnow()))  # fmt: skip
        settings = archiver_settings(audit_database_url)
        async with running_archiver(archiver, settings, probe=operator):
            await eventually(lambda: archived_seqs(audit_database_url), what="the event archived")
        other = f"$JS.API.CONSUMER.CREATE.{n.events_stream}.spy.{n.events_all()}"
        await refused(
            secured,
            other,
            lambda: archiver.js.add_consumer(
                n.events_stream,
                ConsumerConfig(name="spy", durable_name="spy", filter_subject=n.events_all()),
            ),
        )
        next_task = f"$JS.API.CONSUMER.MSG.NEXT.{n.tasks_stream}.cap-echo"
        await refused(secured, next_task, lambda: archiver.nc.request(next_task, b"1", timeout=2))
        await refused(
            secured,
            f"$JS.API.STREAM.INFO.KV_{n.tasks_bucket}",
            lambda: archiver.js.key_value(n.tasks_bucket),
        )
        forged = n.event_subject("agent", "joined")
        await refused(secured, forged, lambda: archiver.js.publish(forged, b"{}", timeout=2))
        await refused(
            secured,
            f"$JS.API.STREAM.DELETE.{n.events_stream}",
            lambda: archiver.js.delete_stream(n.events_stream),
        )
    finally:
        await archiver.close()


async def test_a_service_that_may_not_raise_a_buckets_replicas_starts_anyway(
    secured: AuthServer, prefix: str
) -> None:
    """A bucket another identity created with one replica (services starting while a
    cluster forms), and a service that may create it but not update it: the raise is
    refused by permissions, which nats-py reports as a timeout; the service logs it and
    starts, rather than dying on it."""
    operator = await Bus.connect(secured.operator(prefix))
    try:
        await operator.ensure()  # every bucket R1 (one server)
    finally:
        await operator.close()
    settings = secured.service(prefix, "scheduler").model_copy(
        update={"stream_replicas": 3, "request_timeout_s": 1.0}
    )
    scheduler = await Bus.connect(settings)
    try:
        tokens = f"KV_{scheduler.names.tokens_bucket}"
        assert not await raise_replicas(scheduler, tokens)  # may create, not update
        await scheduler.ensure(["fleet"])  # the scheduler's start: no exception
    finally:
        await scheduler.close()
