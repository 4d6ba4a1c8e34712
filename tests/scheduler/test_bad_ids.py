"""Over-long or malformed ids in scheduler requests get a 400, never a dead connection.

A 5,000-character task id used to reach a KV get (``$JS.API.DIRECT.GET...<id>``):
nats-server closed the scheduler's connection ("maximum control line exceeded") and
nats-py never reconnected, so every later submit answered 503. The scheduler runs as
a real process here, as in production.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentbus.bus import Bus
from agentbus.errors import ContractError
from agentbus.messages import (
    CancelReply,
    CancelTask,
    DeleteDeployment,
    DeployReply,
    GetTask,
    ListPlacements,
    Message,
    PlacementsReply,
    ResubmitTask,
    ScaleDeployment,
    SubmitReply,
    SubmitTask,
    TaskReply,
    TaskStarted,
    encode,
    utcnow,
)
from tests._harness.polling import answers, eventually
from tests._harness.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.slow]

LONG = "a" * 5000


@pytest.fixture
async def scheduler_process(bus: Bus, tmp_path: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    log = tmp_path / "scheduler.log"
    proc = spawn_service("scheduler", bus.settings.nats_url, bus.names.prefix, log)
    get = bus.names.endpoint("scheduler", "get")
    try:
        await eventually(
            lambda: answers(lambda: bus.request(get, GetTask(task_id="x"), TaskReply)),
            what="scheduler answers",
        )
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)


BAD_REQUESTS: list[tuple[str, Message, type[Message]]] = [
    ("cancel", CancelTask(task_id=LONG), CancelReply),
    ("get", GetTask(task_id=LONG), TaskReply),
    ("get", GetTask(task_id="a.b"), TaskReply),
    ("resubmit", ResubmitTask(task_id=LONG), SubmitReply),
    ("submit", SubmitTask(capability="echo", parent_id=LONG), SubmitReply),
    ("submit", SubmitTask(capability="echo", handoff_from=LONG), SubmitReply),
    ("delete", DeleteDeployment(name=LONG), DeployReply),
    ("scale", ScaleDeployment(name=LONG, replicas=1), DeployReply),
    ("placements", ListPlacements(deployment=LONG), PlacementsReply),
]


@pytest.mark.timeout(90)
async def test_bad_ids_get_400_and_the_scheduler_keeps_serving(
    bus: Bus, scheduler_process: subprocess.Popen[bytes]
) -> None:
    for verb, request, reply in BAD_REQUESTS:
        with pytest.raises(ContractError):
            await bus.request(bus.names.endpoint("scheduler", verb), request, reply)
    submitted = await bus.request(
        bus.names.endpoint("scheduler", "submit"), SubmitTask(capability="echo"), SubmitReply
    )
    assert submitted.created
    assert scheduler_process.poll() is None


@pytest.mark.timeout(90)
async def test_report_with_a_bad_task_id_is_dropped_and_the_scheduler_keeps_serving(
    bus: Bus, scheduler_process: subprocess.Popen[bytes]
) -> None:
    now = utcnow()
    report = TaskStarted(task_id=LONG, agent_id="a1", attempt=1, started_at=now)
    await bus.js.publish(bus.names.result_subject("echo", "a1"), encode(report))

    async def consumed() -> bool:
        return (await bus.js.stream_info(bus.names.results_stream)).state.messages == 0

    await eventually(consumed, what="the bad report is consumed")
    submitted = await bus.request(
        bus.names.endpoint("scheduler", "submit"), SubmitTask(capability="echo"), SubmitReply
    )
    assert submitted.created
    assert scheduler_process.poll() is None
