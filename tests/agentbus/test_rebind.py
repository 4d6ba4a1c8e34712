"""A running agent binds again when its task consumer or the task stream is recreated.

Who makes what: the task stream comes from ``Bus.ensure()`` (every service runs it on
start: a restarted scheduler recreates a deleted stream); the capability consumers
only from agents (``Agent._bind`` at start, ``agentbus.runtime.rebind`` afterwards). Real
scheduler in-process, real agent on its own connection, real nats-server.
"""

from __future__ import annotations

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.settings import BusSettings
from tests._harness.agents import agent_running, worker
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler

pytestmark = pytest.mark.nats


def rebinds(w_agent: object) -> float:
    """``agentbus_agent_rebinds_total{capability="work"}`` of the agent (0 if unset)."""
    value = w_agent.registry.get_sample_value(  # type: ignore[attr-defined]
        "agentbus_agent_rebinds_total", {"capability": "work"}
    )
    return value or 0.0


async def submit_and_wait(client: Client, value: str) -> None:
    record = await client.submit("work", value)
    done = await client.wait(record.task_id, timeout_s=20)
    assert done.status == "succeeded", done
    assert msgspec.json.decode(done.output) == value


@pytest.mark.timeout(90)
async def test_agent_binds_again_after_its_consumer_is_deleted(
    bus: Bus, bus_settings: BusSettings
) -> None:
    w = worker("rebind-c")
    async with running_scheduler(bus), agent_running(w.agent, bus_settings):
        client = Client(bus)
        await submit_and_wait(client, "before")
        consumer = bus.names.task_consumer("work")
        await bus.js.delete_consumer(bus.names.tasks_stream, consumer)
        await submit_and_wait(client, "after")  # no agent restart
        info = await bus.js.consumer_info(bus.names.tasks_stream, consumer)
        assert info.config.ack_wait == w.agent.settings.lease_s
        assert rebinds(w.agent) == 1


@pytest.mark.timeout(90)
async def test_agent_binds_again_after_the_task_stream_is_recreated(
    bus: Bus, bus_settings: BusSettings
) -> None:
    w = worker("rebind-s")
    async with running_scheduler(bus), agent_running(w.agent, bus_settings):
        client = Client(bus)
        await submit_and_wait(client, "before")
        await bus.js.delete_stream(bus.names.tasks_stream)
        await bus.ensure()  # what a restarted scheduler does: the stream, no consumers
        await submit_and_wait(client, "after")
        names = await eventually(
            lambda: _consumer_names(bus), what="every band bound again", timeout_s=20
        )
        assert len(names) == 10
        assert rebinds(w.agent) == 1


async def _consumer_names(bus: Bus) -> list[str] | None:
    infos = await bus.js.consumers_info(bus.names.tasks_stream)
    names = sorted(i.name for i in infos)
    return names if len(names) == 10 else None
