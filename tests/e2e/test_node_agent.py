"""A Node.js agent written from docs/protocol.md alone serves tasks of the Python stack.

The agent is examples/node-agent/agent.mjs (capability ``upper``); these tests run it
against an embedded stack (nats-server and the five services as processes, auth on)
with credentials from ``agentbus auth agent`` for deployment ``node-upper``, and check
the whole agent contract: registry heartbeat, results, failures, large values through
the Object Store, poison messages, and a clean SIGTERM, all within its permissions;
then events between agents ("Events between agents"): the Node agent's events land on
the subject and with the headers the Python library computes, and each side handles
the other's events; and that it reconnects with renewed credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js.api import ConsumerConfig, ConsumerInfo
from typer.testing import CliRunner

from agentbus.auth.creds import creds_jwt
from agentbus.auth.nats_jwt import decode
from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.events import EventContext, publish_event
from agentbus.messages import Deployment, Subscription
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings, BusSettings
from tests._harness.node_agent import node, start_agent
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["node"]  # the fixture


@pytest.fixture
async def stack() -> AsyncIterator[EmbeddedStack]:
    prefix = f"node{uuid.uuid4().hex[:8]}"
    async with EmbeddedStack(runtime="process", prefix=prefix) as s:  # auth on
        yield s


NODE_DEPLOYMENT = Deployment(
    name="node-upper",  # the agent's name: its shared subscription's owner either way
    command=["node", "agent.mjs"],
    replicas=0,  # started by hand here
    capabilities=["upper"],
    publishes=["text.uppercased", "text.noted"],
    subscriptions=[Subscription(pattern="notes.>", name="notes")],
)


async def _mint(stack: EmbeddedStack, agent_id: str, out: Path, *, ttl_s: float = 600.0) -> Path:
    """Store ``NODE_DEPLOYMENT`` and run ``agentbus auth agent`` for ``agent_id`` (as an
    operator): it provisions the agent's consumers and writes its creds to ``out``."""
    bus = await Bus.connect(stack.settings, name="test-node-deploy")
    try:
        await Client(bus).deploy(NODE_DEPLOYMENT)
    finally:
        await bus.close()
    assert stack.credentials is not None
    argv = [
        "auth", "agent", agent_id, "--deployment", NODE_DEPLOYMENT.name,
        "--dir", str(stack.credentials.auth_dir), "--ttl-s", str(ttl_s), "--out", str(out),
        "--nats-url", stack.nats_url, "--prefix", stack.prefix,
    ]  # fmt: skip
    env = {"AGENTBUS_CREDS_FILE": str(stack.credentials.operator_creds)}
    result = await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == out
    return out


def _agent_env(stack: EmbeddedStack, agent_id: str, creds: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTBUS_NATS_URL": stack.nats_url,
        "AGENTBUS_PREFIX": stack.prefix,
        "AGENTBUS_CREDS_FILE": str(creds),
        "AGENTBUS_AGENT_ID": agent_id,
        "AGENTBUS_AGENT_DEPLOYMENT": NODE_DEPLOYMENT.name,
        "AGENTBUS_AGENT_CAPABILITIES": "upper",
        "AGENTBUS_AGENT_MAX_CONCURRENCY": "2",
    }


def _violations(stack: EmbeddedStack, creds: Path) -> list[str]:
    """What nats-server refused the user of ``creds`` (its permission violations)."""
    user = decode(creds_jwt(creds))["sub"]
    text = (stack.log_dir / "nats-server.log").read_text(errors="replace")
    return [line for line in text.splitlines() if "Violation" in line and user in line]


async def test_node_agent_serves_tasks(node: str, stack: EmbeddedStack, tmp_path: Path) -> None:
    agent_id = f"node-upper-{uuid.uuid4().hex[:6]}"
    creds = await _mint(stack, agent_id, tmp_path / "agent.creds")
    log_path = tmp_path / "agent.log"
    proc = start_agent(node, _agent_env(stack, agent_id, creds), log_path)
    bus = await Bus.connect(stack.settings, name="test-node-agent")
    names, client = bus.names, Client(bus)

    def agent_log() -> str:
        return log_path.read_text(errors="replace")

    async def listed() -> bool:
        assert proc.poll() is None, f"agent exited {proc.returncode}:\n{agent_log()}"
        return agent_id in {a.agent_id for a in await client.agents("upper")}

    try:
        await eventually(listed, timeout_s=30, what="the node agent in the registry")
        info = next(a for a in await client.agents("upper") if a.agent_id == agent_id)
        assert info.capabilities == ["upper"]
        assert info.pid == proc.pid

        # successes, two at a time (max concurrency 2)
        words = ["hello", "wire protocol", "ünïcode"]
        submitted = [await client.submit("upper", w) for w in words]
        for word, sub in zip(words, submitted, strict=True):
            record = await client.wait(sub.task_id, timeout_s=30)
            assert record.status == "succeeded", (record, agent_log())
            assert await client.output(record, str) == word.upper()
            assert record.agent_id == agent_id
            assert [a.number for a in record.attempts] == [1]

        # a handler error is a failed result with ErrorInfo
        bad = await client.submit("upper", {"fail": "why"})
        failed = await client.wait(bad.task_id, timeout_s=30)
        assert failed.status == "failed", (failed, agent_log())
        assert failed.error is not None
        assert failed.error.error_type == "ValueError"
        assert failed.error.message == "why"

        # over 64 KiB: input and output travel through the Object Store
        big = "abc" * 30_000
        large = await client.submit("upper", big)
        assert large.input_ref is not None
        done = await client.wait(large.task_id, timeout_s=30)
        assert done.status == "succeeded", (done, agent_log())
        assert done.output_ref is not None
        assert done.output is None or bytes(done.output) == b"null"  # msgspec.Raw
        assert await client.output(done, str) == big.upper()

        # heartbeats every 2 s keep the entry alive past the 10 s TTL of <p>_agents
        await asyncio.sleep(11)
        assert await listed(), f"the agent expired from the registry:\n{agent_log()}"

        # a poison message is termed and reported as an ErrorEvent, never retried
        errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_error(msg: Any) -> None:
            await errors.put(json.loads(msg.data))

        error_sub = await bus.nc.subscribe(f"{stack.prefix}.events.error.agent.*", cb=on_error)
        await bus.js.publish(f"{stack.prefix}.tasks.upper", b"not json at all")
        event = await asyncio.wait_for(errors.get(), timeout=15)
        await error_sub.unsubscribe()
        assert event["type"] == "ErrorEvent"
        assert event["subject"] == f"{stack.prefix}.tasks.upper"
        assert event["service"] == f"agent:{agent_id}"

        async def drained() -> bool:
            ci: ConsumerInfo = await bus.js.consumer_info(
                f"{stack.prefix.upper()}_TASKS", "cap-upper"
            )
            return ci.num_pending == 0 and ci.num_ack_pending == 0

        await eventually(drained, timeout_s=10, what="the poison message gone from cap-upper")

        # SIGTERM: exit 0 and leave the registry
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 20)
        assert rc == 0, agent_log()

        async def gone() -> bool:
            return agent_id not in {a.agent_id for a in await client.agents("upper")}

        await eventually(gone, timeout_s=5, what="the node agent gone from the registry")
        # all of it within its permissions (nats-server logs each refusal) ...
        assert _violations(stack, creds) == [], agent_log()

        # ... which refuse what it must not do: create a consumer, report for another
        mine = await Bus.connect(
            BusSettings(nats_url=stack.nats_url, prefix=stack.prefix, creds_file=creds)
        )
        try:
            with pytest.raises((TimeoutError, nats.errors.Error)):
                await mine.js.add_consumer(
                    names.tasks_stream, ConsumerConfig(name="cap-upper", ack_wait=1.0), timeout=2
                )
            await mine.nc.publish(f"{stack.prefix}.results.upper.someone-else", b"{}")
            await mine.nc.flush()
        finally:
            await mine.close()

        def refused() -> bool:
            text = "\n".join(_violations(stack, creds))
            return f"$JS.API.CONSUMER.CREATE.{names.tasks_stream}.cap-upper" in text and (
                f"{stack.prefix}.results.upper.someone-else" in text
            )

        await eventually(refused, timeout_s=5, what="nats-server refusing both")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await bus.close()


async def test_node_agent_without_its_consumer_stops(
    node: str, stack: EmbeddedStack, tmp_path: Path
) -> None:
    """A consumer the agent reads is missing: with credentials it may not create it, so
    it stops (exit 1) naming the consumer and who provisions it."""
    agent_id = f"node-upper-{uuid.uuid4().hex[:6]}"
    creds = await _mint(stack, agent_id, tmp_path / "agent.creds")
    bus = await Bus.connect(stack.settings, name="test-node-missing")
    try:
        await bus.js.delete_consumer(bus.names.topics_stream, "topic-node-upper-notes-k7")
    finally:
        await bus.close()
    log_path = tmp_path / "agent.log"
    proc = start_agent(node, _agent_env(stack, agent_id, creds), log_path)
    try:
        rc = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text(errors="replace")
    assert rc == 1, log
    missing = f"consumer topic-node-upper-notes-k7 on {bus.names.topics_stream}: consumer not found"
    assert missing in log, log
    assert f"`agentbus auth agent {agent_id} --deployment node-upper`" in log, log
    assert _violations(stack, creds) == []  # it did not try to create it


async def test_node_agent_reconnects_with_renewed_credentials(
    node: str, stack: EmbeddedStack, tmp_path: Path
) -> None:
    """Its credentials expire while it runs, after its supervisor (here: a second
    ``agentbus auth agent``) renewed the file: the server drops it, it reconnects with
    the file's new credentials and keeps serving."""
    agent_id = f"node-upper-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "agent.creds"
    await _mint(stack, agent_id, path, ttl_s=8.0)
    log_path = tmp_path / "agent.log"
    proc = start_agent(node, _agent_env(stack, agent_id, path), log_path)
    bus = await Bus.connect(stack.settings, name="test-node-renew")
    client = Client(bus)

    def agent_log() -> str:
        return log_path.read_text(errors="replace")

    async def listed() -> bool:
        assert proc.poll() is None, f"agent exited {proc.returncode}:\n{agent_log()}"
        return agent_id in {a.agent_id for a in await client.agents("upper")}

    def reconnected() -> bool:
        assert proc.poll() is None, f"agent exited {proc.returncode}:\n{agent_log()}"
        return "connection reconnect" in agent_log()

    try:
        await eventually(listed, timeout_s=30, what="the node agent in the registry")
        await _mint(stack, agent_id, path)  # renewed: 10 min
        await eventually(reconnected, timeout_s=30, what="a reconnect once the first expired")
        record = await client.wait((await client.submit("upper", "renewed")).task_id, timeout_s=30)
        assert record.status == "succeeded", (record, agent_log())
        assert await listed()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, agent_log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await bus.close()


async def _subjects(bus: Bus) -> set[str]:
    """The subjects ``<P>_TOPICS`` holds events on."""
    info = await bus.js.stream_info(bus.names.topics_stream, subjects_filter=">")
    return set(info.state.subjects or {})


async def _stored_event(bus: Bus, subject: str) -> Any:
    """The first event stored on ``subject`` in ``<P>_TOPICS``, read by a pull consumer
    (a direct get would hand a non-ASCII header back as an ``email`` Header)."""
    psub = await bus.js.pull_subscribe(subject, stream=bus.names.topics_stream)
    try:
        [msg] = await psub.fetch(1, timeout=10)
        return msg
    finally:
        await psub.unsubscribe()


async def test_node_agent_events_interoperate_with_python(
    node: str, stack: EmbeddedStack, tmp_path: Path
) -> None:
    """The Node agent publishes ``text.uppercased`` after each ``upper`` task and
    subscribes (shared, deployment = its name ``node-upper``) to ``notes.>``, answering
    each note with a ``text.noted`` event; a Python agent subscribes to ``text.>``."""
    agent_id = f"node-upper-{uuid.uuid4().hex[:6]}"
    bus = await Bus.connect(stack.settings, name="test-node-events")
    names, client = bus.names, Client(bus)
    handled: asyncio.Queue[tuple[EventContext, dict[str, Any]]] = asyncio.Queue()
    py = Agent("py-texts", settings=AgentSettings(agent_id=f"py-texts-{uuid.uuid4().hex[:6]}"))

    @py.handler("py-noop")
    async def noop(ctx: Any, value: Any) -> Any:
        return value

    @py.on_event("text.>", name="texts")
    async def texts(ctx: EventContext, payload: dict[str, Any]) -> None:
        await handled.put((ctx, payload))

    stop = asyncio.Event()
    py_run = asyncio.create_task(py.run(bus, stop))
    log_path = tmp_path / "agent.log"
    creds = await _mint(stack, agent_id, tmp_path / "agent.creds")
    proc = start_agent(node, _agent_env(stack, agent_id, creds), log_path)

    def agent_log() -> str:
        return log_path.read_text(errors="replace")

    parts = ["", *(f"-k{n}" for n in range(8))]
    wanted = {f"topic-{s}{p}" for s in ("py-texts-texts", "node-upper-notes") for p in parts}

    async def subscribed() -> bool:
        assert proc.poll() is None, f"agent exited {proc.returncode}:\n{agent_log()}"
        assert not py_run.done(), py_run
        return wanted <= {i.name for i in await bus.js.consumers_info(names.topics_stream)}

    async def next_handled() -> tuple[EventContext, dict[str, Any]]:
        try:
            return await asyncio.wait_for(handled.get(), timeout=20)
        except TimeoutError:
            raise AssertionError(f"no event reached the Python agent:\n{agent_log()}") from None

    try:
        # the Node agent's subscription: nine consumers named and configured as documented
        await eventually(subscribed, timeout_s=30, what="both subscriptions' consumers")
        keyless = await bus.js.consumer_info(names.topics_stream, "topic-node-upper-notes")
        keyed = await bus.js.consumer_info(names.topics_stream, "topic-node-upper-notes-k3")
        assert keyed.config.filter_subjects == names.topic_filters("notes.>", "k3")
        assert keyless.config.filter_subjects == names.topic_filters("notes.>", "_")
        assert (keyed.config.max_ack_pending, keyless.config.max_ack_pending) == (1, 10_000)
        assert keyed.config.ack_wait == 30 and keyed.config.max_deliver == 6
        assert keyed.config.metadata is not None
        assert {k: v for k, v in keyed.config.metadata.items() if k.startswith("agentbus_")} == {
            "agentbus_pattern": "notes.>",
            "agentbus_mode": "shared",
            "agentbus_owner": "node-upper",
            "agentbus_subscription": "notes",
            "agentbus_part": "k3",
        }

        # 1. Node publishes: FNV-1a of the key's UTF-8 bytes, unsigned (k3, k4 here)
        keys = ["ünïcode", "wire protocol"]
        task_ids = {}
        for key in keys:
            record = await client.wait((await client.submit("upper", key)).task_id, timeout_s=30)
            assert record.status == "succeeded", (record, agent_log())
            task_ids[record.task_id] = key
            subject = names.topic_subject("text.uppercased", key)
            assert subject in await _subjects(bus), (key, agent_log())
            msg = await _stored_event(bus, subject)
            assert msg.headers is not None
            assert {h: msg.headers.get(h) for h in _EVENT_HEADERS} == {
                "Nats-Msg-Id": record.task_id,  # a redelivered task publishes it once
                "Agentbus-Event-Type": "dict",
                "Agentbus-Event-Key": key,
                "Agentbus-Source": agent_id,
            }
            assert json.loads(msg.data) == {
                "task_id": record.task_id,
                "input": key,
                "output": key.upper(),
            }
        assert await _subjects(bus) == {names.topic_subject("text.uppercased", k) for k in keys}
        # ... and a Python @agent.on_event handler gets them
        for _ in keys:
            ctx, payload = await next_handled()
            key = task_ids.pop(ctx.event_id)
            assert (ctx.topic, ctx.key, ctx.source) == ("text.uppercased", key, agent_id)
            assert payload["output"] == key.upper()

        # 2. Node subscribes: Python's events on notes.> are handled and answered
        errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_error(msg: Any) -> None:
            await errors.put(json.loads(msg.data))

        error_sub = await bus.nc.subscribe(f"{stack.prefix}.events.error.agent.*", cb=on_error)
        notes = {"notes.greeting": ("é", "bonjour é"), "notes.misc.keyless": (None, "no key")}
        sent = {}
        for topic, (note_key, text) in notes.items():
            receipt = await publish_event(bus, topic, {"text": text}, key=note_key, source="test")
            sent[receipt.event_id] = (topic, note_key, text)
        for _ in notes:
            ctx, payload = await next_handled()
            answered = payload["event_id"]  # the id of the note this event answers
            topic, note_key, text = sent.pop(answered)
            assert payload == {"event_id": answered, "topic": topic, "text": text.upper()}
            assert (ctx.topic, ctx.key, ctx.source) == ("text.noted", note_key, agent_id)

        # a body that is not JSON is termed and reported, never retried
        bad_subject = names.topic_subject("notes.bad")
        await bus.js.publish(bad_subject, b"not json at all")
        event = await asyncio.wait_for(errors.get(), timeout=15)
        await error_sub.unsubscribe()
        assert (event["type"], event["subject"]) == ("ErrorEvent", bad_subject)
        assert event["service"] == f"agent:{agent_id}"  # as the Python runtime names it

        async def drained() -> bool:
            infos = await bus.js.consumers_info(names.topics_stream)
            mine = [i for i in infos if i.name.startswith("topic-node-upper-notes")]
            return len(mine) == 9 and all(
                i.num_pending == 0 and i.num_ack_pending == 0 for i in mine
            )

        await eventually(drained, timeout_s=15, what="every note acked or termed")

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, agent_log()
        assert _violations(stack, creds) == [], agent_log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        await asyncio.wait_for(py_run, timeout=30)
        await bus.close()


_EVENT_HEADERS = ("Nats-Msg-Id", "Agentbus-Event-Type", "Agentbus-Event-Key", "Agentbus-Source")
