"""Crash -> restart -> restore -> re-claim, end to end in containers.

An ``EmbeddedStack`` runs nats-server and the five services (the supervisor with its
Docker runtime); the ``counter`` agent runs as a container of ``agentbus/agent:dev``.
A task counts through 10,000 steps, checkpointing every 100 and recording every step
it completes in a stream. Mid-way the test SIGKILLs the container. The supervisor
restarts it (same agent id), the agent restores its own state (a start counter), the
task's lease lapses and it is redelivered, the new attempt resumes from the task's
last checkpoint, and the result is exactly right, with at most one interval redone.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import aiodocker
import msgspec
import pytest

from agentbus.agents.counter import CountResult, CountTask, StepDone
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded import EmbeddedStack
from agentbus.messages import Deployment, ReplicaEvent
from agentbus.state import task_thread
from agentbus.state.checkpoints import CheckpointClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
STEPS, EVERY = 10_000, 100
KILL_AFTER_STEP = 3_000


@pytest.fixture
async def stack(agent_image: str) -> AsyncIterator[tuple[EmbeddedStack, Client]]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    async with EmbeddedStack(runtime="docker", prefix=prefix) as stack:
        bus = await Bus.connect(stack.settings)
        try:
            yield stack, Client(bus)
        finally:
            await bus.close()


async def container_id(stack: EmbeddedStack, agent_id: str) -> str:
    async with aiodocker.Docker() as docker:
        labels = [f"agentbus.prefix={stack.prefix}", f"agentbus.agent_id={agent_id}"]
        (container,) = await docker.containers.list(filters={"label": labels})
        return str(container.id)


async def sigkill(container: str) -> None:
    async with aiodocker.Docker() as docker:
        await docker.containers.container(container).kill(signal="SIGKILL")


async def read_steps(bus: Bus) -> list[StepDone]:
    """Every step record stored on ``<p>.events.counter.step.<agent_id>``, of every agent."""
    subject = bus.names.event_subject("counter", "step.*")
    info = await bus.js.stream_info(bus.names.events_stream, subjects_filter=subject)
    count = sum((info.state.subjects or {}).values())
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    out: list[StepDone] = []
    try:
        while len(out) < count:
            msg = await sub.next_msg(timeout=30)
            out.append(msgspec.json.decode(msg.data, type=StepDone))
    finally:
        await sub.unsubscribe()
    return out


async def test_sigkilled_agent_restores_and_its_task_resumes_from_the_checkpoint(
    stack: tuple[EmbeddedStack, Client], agent_image: str
) -> None:
    embedded, client = stack
    bus = client.bus
    events = await bus.js.subscribe(bus.names.events_all("replica"), ordered_consumer=True)
    await client.deploy(
        Deployment(
            name="counter",
            replicas=1,
            capabilities=["count"],
            image=agent_image,
            image_command=["python", "-m", "agentbus.agents.counter"],
            env={"AGENTBUS_AGENT_LEASE_S": "3", "AGENTBUS_AGENT_FETCH_TIMEOUT_S": "1"},
        )
    )
    async with asyncio.timeout(90):
        while not await client.agents("count"):
            await asyncio.sleep(0.2)
    (agent,) = await client.agents("count")
    first_container = await container_id(embedded, agent.agent_id)

    task = CountTask(steps=STEPS, every=EVERY, step_sleep_s=0.001, record_steps=True)
    record = await client.submit("count", task, max_attempts=3, timeout_s=300)
    progress = CheckpointClient(bus, "count")

    async with asyncio.timeout(120):  # wait for real progress, then kill mid-way
        while True:
            latest = await progress.latest(task_thread(record.task_id))
            if latest is not None and int(latest.metadata["step"]) >= KILL_AFTER_STEP:
                break
            await asyncio.sleep(0.05)
    await sigkill(first_container)
    killed = await progress.latest(task_thread(record.task_id))
    assert killed is not None
    saved_at_kill = int(killed.metadata["step"])
    assert saved_at_kill < STEPS, "the task finished before the kill: make it longer"

    final = await client.wait(record.task_id, timeout_s=300)
    assert final.status == "succeeded", final.error
    out = await client.output(final, CountResult)

    # exactly right, by a restarted agent that restored its own state
    assert out.total == STEPS * (STEPS - 1) // 2
    assert out.attempt >= 2
    assert out.agent_id == agent.agent_id
    assert out.agent_starts == 2, "the restarted agent restored its start count"
    assert await container_id(embedded, agent.agent_id) != first_container
    async with asyncio.timeout(60):
        while True:
            event = msgspec.json.decode((await events.next_msg(timeout=60)).data, type=ReplicaEvent)
            if event.agent_id == agent.agent_id and event.kind == "restarting":
                break
    await events.unsubscribe()

    # resumed from the checkpoint: not from scratch, at or after what was saved at the kill
    assert saved_at_kill <= out.resumed_from < STEPS
    assert out.resumed_from % EVERY == 0
    assert out.executed == STEPS  # as far as the checkpoints know

    # the step log: every step done, and at most one interval redone
    steps = await read_steps(bus)
    runs = collections.Counter(s.step for s in steps)
    assert set(runs) == set(range(STEPS))
    redone = sorted(step for step, n in runs.items() if n > 1)
    assert max(runs.values()) <= 2
    assert len(redone) < EVERY, f"{len(redone)} steps redone"
    assert all(out.resumed_from <= step < out.resumed_from + EVERY for step in redone)
    first_attempt = [s.step for s in steps if s.attempt == 1]
    final_attempt = [s.step for s in steps if s.attempt == out.attempt]
    assert max(first_attempt) < out.resumed_from + EVERY
    assert min(final_attempt) == out.resumed_from
    # the task's checkpoints are gone once it succeeded
    assert await progress.latest(task_thread(record.task_id)) is None
