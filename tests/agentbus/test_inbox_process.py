"""Direct messages to an agent process that is stopped: held, then delivered or expired."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from tests._harness.agent_process import agent_process
from tests._harness.polling import eventually

pytestmark = pytest.mark.nats


@contextmanager
def mail_agent(bus: Bus, agent_id: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``tests.agentbus._mail_agent`` as ``agent_id``; SIGTERM and reap it at the end."""
    with agent_process(
        bus,
        "tests.agentbus._mail_agent",
        agent_id,
        log.parent,
        AGENTBUS_TEST_MAIL_LOG=str(log),
        AGENTBUS_AGENT_FETCH_TIMEOUT_S="0.5",
    ) as proc:
        yield proc


async def _consumer_bound(bus: Bus, agent_id: str) -> bool:
    try:
        await bus.js.consumer_info(bus.names.inbox_stream, bus.names.inbox_consumer(agent_id))
    except nats.js.errors.NotFoundError:
        return False
    return True


def _lines(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [msgspec.json.decode(line) for line in log.read_bytes().splitlines()]


async def _start_and_stop(bus: Bus, agent_id: str, log: Path) -> None:
    """Run the agent until its inbox consumer exists, then stop it (it is down after)."""
    with mail_agent(bus, agent_id, log) as proc:
        await eventually(lambda: _consumer_bound(bus, agent_id), what="inbox consumer bound")
    assert proc.returncode == 0


@pytest.mark.timeout(120)
async def test_message_to_a_stopped_agent_is_delivered_when_it_comes_back(
    bus: Bus, tmp_path: Path
) -> None:
    client, log = Client(bus), tmp_path / "mail.jsonl"
    await _start_and_stop(bus, "mail-1", log)
    sent = await client.send("mail-1", {"hello": "while you were out"}, ttl_s=120, wait_s=1)
    assert sent.outcome == "pending"
    assert (await client.message_outcome(sent)).outcome == "pending"
    assert _lines(log) == []
    with mail_agent(bus, "mail-1", log):

        async def delivered() -> bool:
            return (await client.message_outcome(sent)).delivered

        await eventually(delivered, timeout_s=30, what="delivered receipt")
        assert _lines(log) == [
            {"id": sent.message_id, "kind": "direct", "payload": {"hello": "while you were out"}}
        ]
        live = await client.send("mail-1", {"hello": "now"}, wait_s=20)
    assert live.delivered


@pytest.mark.timeout(120)
async def test_message_expiring_while_the_agent_is_down_is_reported_expired(
    bus: Bus, tmp_path: Path
) -> None:
    client, log = Client(bus), tmp_path / "mail.jsonl"
    await _start_and_stop(bus, "mail-2", log)
    sent = await client.send("mail-2", {"n": 1}, ttl_s=1, wait_s=20)
    assert sent.expired and sent.error is None
    assert (await client.message_outcome(sent)).expired
    with mail_agent(bus, "mail-2", log):
        later = await client.send("mail-2", {"n": 2}, wait_s=30)
    assert later.delivered
    assert [line["payload"] for line in _lines(log)] == [{"n": 2}]  # the expired one never ran
