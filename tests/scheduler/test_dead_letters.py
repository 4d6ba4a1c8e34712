"""Dead letters: every way a task ends ``dead``, the index, listing and resubmission.

- the agent ends a task whose delivery count exceeds its ``max_attempts`` (agents
  died mid-task, leases lapsed) without running it;
- a message that hits the consumer's ``max_deliver`` stays in the WorkQueue stream:
  the scheduler moves it (MAX_DELIVERIES advisory, kept in ``<P>_TASK_ADVISORIES``
  while no scheduler runs; else a sweep), marks the record dead and deletes it;
- dead tasks are listed (client, CLI, HTTP) from the index and can be resubmitted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.errors import ConflictError, NotFoundError
from agentbus.messages import TasksReply
from agentbus.runtime import TaskContext
from agentbus.settings import BusSettings
from tests._harness.gateway import start_gateway, stop_gateway
from tests._harness.polling import eventually
from tests._harness.work_stream import (
    FAST,
    Calls,
    bind_like_an_agent,
    deleted,
    make_agent,
    running,
    scheduler,
    stream_messages,
    take_and_die,
)

pytestmark = pytest.mark.nats
DEAD = "agentbus_scheduler_dead_letters_total"


async def _stick(bus: Bus, capability: str, task_id: str) -> int:
    """Deliver ``task_id`` twice to dying agents on a consumer with max_deliver 2.

    Returns the message's stream sequence. The pull after the second lapse makes the
    server give up on it (MAX_DELIVERIES advisory): the message stays in the stream.
    """
    sub = await bind_like_an_agent(bus, capability, ack_wait_s=1.0, max_deliver=2)
    try:
        first = await take_and_die(bus, sub, capability, agent="crashy-1")
        await take_and_die(bus, sub, capability, agent="crashy-2")
        with pytest.raises(TimeoutError):
            await sub.fetch(1, timeout=2.5)
    finally:
        await sub.unsubscribe()
    return int(first.metadata.sequence.stream)


def _check_moved(record: Any, *, every_start_seen: bool = True) -> None:
    """Dead, running attempts lost. After a scheduler restart the advisory may be
    applied before the queued ``TaskStarted`` reports (those arriving later are
    dropped: the record had ended), so only a prefix of the attempts may show."""
    assert record.status == "dead"
    attempts = [(a.number, a.agent_id, a.status) for a in record.attempts]
    expected = [(1, "crashy-1", "lost"), (2, "crashy-2", "lost")]
    assert attempts == expected if every_start_seen else attempts == expected[: len(attempts)]
    assert all(a.error is not None and a.error.error_type == "AttemptLost" for a in record.attempts)
    assert record.error is not None and record.error.error_type == "MaxDeliveriesExceeded"


@pytest.mark.timeout(60)
async def test_max_deliveries_advisory_moves_the_stuck_message(bus: Bus) -> None:
    async with scheduler(bus, sweep_interval_s=600) as s:  # only the advisory acts
        await s.client.submit("crashy", {"n": 1}, task_id="stuck-1", max_attempts=10)
        seq = await _stick(bus, "crashy", "stuck-1")
        record = await s.client.wait("stuck-1", timeout_s=20)
        assert await eventually(lambda: deleted(bus, seq), what="stuck message deleted")
        dead = await s.client.dead_tasks()
        assert s.metric(DEAD, {"source": "advisory"}) == 1
        assert s.metric(DEAD, {"source": "sweep"}) == 0
        history = [e.status for e in await s.client.history("stuck-1")]
    _check_moved(record)
    assert [t.task_id for t in dead.tasks] == ["stuck-1"]
    assert history == ["queued", "running", "running", "dead"]


@pytest.mark.timeout(90)
async def test_advisory_kept_while_no_scheduler_runs(bus: Bus) -> None:
    async with scheduler(bus) as s:  # creates the advisory stream, then goes away
        await s.client.submit("crashy", None, task_id="stuck-2", max_attempts=10)
    seq = await _stick(bus, "crashy", "stuck-2")
    assert not await deleted(bus, seq)  # WorkQueue: the message did not go away
    async with scheduler(bus, sweep_interval_s=600) as s:
        record = await s.client.wait("stuck-2", timeout_s=20)
        assert await eventually(lambda: deleted(bus, seq), what="stuck message deleted")
        assert s.metric(DEAD, {"source": "advisory"}) == 1
    _check_moved(record, every_start_seen=False)


@pytest.mark.timeout(90)
async def test_sweep_moves_a_stuck_message_whose_advisory_was_lost(bus: Bus) -> None:
    async with scheduler(bus) as s:
        await s.client.submit("crashy", None, task_id="stuck-3", max_attempts=10)
    seq = await _stick(bus, "crashy", "stuck-3")
    assert not await deleted(bus, seq)
    await bus.js.purge_stream(bus.names.task_advisories_stream)  # the advisory is gone
    async with scheduler(bus, sweep_interval_s=0.3) as s:
        record = await s.client.wait("stuck-3", timeout_s=20)
        assert await eventually(lambda: deleted(bus, seq), what="stuck message deleted")
        assert s.metric(DEAD, {"source": "sweep"}) == 1
        assert (await s.client.dead_tasks()).total == 1
    _check_moved(record)


@pytest.mark.timeout(60)
async def test_agent_ends_a_task_whose_deliveries_exceed_its_attempts(bus: Bus) -> None:
    calls = Calls()
    agent = make_agent("crashy", lease_s=1.0)

    @agent.handler("crashy")
    async def crashy(ctx: TaskContext, _: Any) -> str:
        calls.seen.append((ctx.task_id, ctx.attempt))
        return "never"

    async with scheduler(bus, sweep_interval_s=600) as s:
        await s.client.submit("crashy", None, task_id="lapsed", max_attempts=2)
        sub = await bind_like_an_agent(bus, "crashy", ack_wait_s=1.0)
        try:  # two agents take it in turn and die: both leases lapse
            await take_and_die(bus, sub, "crashy", agent="crashy-1")
            await take_and_die(bus, sub, "crashy", agent="crashy-2")
        finally:
            await sub.unsubscribe()
        async with running(agent, bus):  # delivery 3 > max_attempts 2: not run
            record = await s.client.wait("lapsed", timeout_s=20)
            assert await eventually(lambda: _empty(bus), what="message termed")
        dead = await s.client.dead_tasks("crashy")
    assert calls.seen == []
    assert record.status == "dead"
    assert [(a.number, a.status) for a in record.attempts] == [(1, "lost"), (2, "lost")]
    assert record.error is not None and record.error.error_type == "AttemptsExhausted"
    assert [t.task_id for t in dead.tasks] == ["lapsed"]


@pytest.mark.timeout(120)
async def test_dead_tasks_listed_by_client_cli_and_http_then_resubmitted(
    bus: Bus, bus_settings: BusSettings
) -> None:
    healthy: dict[str, bool] = {"alpha": False, "beta": False}
    agent = make_agent()

    async def handle(ctx: TaskContext, payload: Any) -> str:
        if not healthy[ctx.task.capability]:
            raise RuntimeError(f"{ctx.task.capability} backend down")
        return f"ok {payload}"

    agent.handler("alpha")(handle)
    agent.handler("beta")(handle)
    async with scheduler(bus) as s, running(agent, bus):
        gw = await start_gateway(bus)
        try:
            await s.client.submit("alpha", 1, task_id="a1", max_attempts=2, backoff=FAST)
            assert (await s.client.wait("a1", timeout_s=20)).status == "dead"
            await s.client.submit("beta", 2, task_id="b1", max_attempts=1)
            assert (await s.client.wait("b1", timeout_s=20)).status == "dead"

            every = await s.client.dead_tasks()
            assert [t.task_id for t in every.tasks] == ["b1", "a1"] and every.total == 2
            only_alpha = await s.client.dead_tasks("alpha")
            assert [t.task_id for t in only_alpha.tasks] == ["a1"] and only_alpha.total == 1
            assert len(only_alpha.tasks[0].attempts) == 2
            assert [t.task_id for t in (await s.client.dead_tasks(limit=1)).tasks] == ["b1"]

            code, out = await _cli(bus_settings, "tasks", "--status", "dead", "--json")
            assert code == 0
            listed = msgspec.json.decode(out, type=TasksReply)
            assert [t.task_id for t in listed.tasks] == ["b1", "a1"]
            code, out = await _cli(
                bus_settings, "tasks", "--status", "dead", "--capability", "beta"
            )
            assert code == 0 and "b1" in out and "a1" not in out and "backend down" in out
            code, _ = await _cli(bus_settings, "tasks", "--status", "bogus")
            assert code == 2

            r = await gw.http.get("/v1/tasks", params={"status": "dead", "capability": "alpha"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["total"] == 1 and [t["task_id"] for t in body["tasks"]] == ["a1"]
            assert body["tasks"][0]["status"] == "dead"
            assert body["tasks"][0]["attempts"][1]["error"]["message"] == "alpha backend down"
            r = await gw.http.get("/v1/tasks", params={"status": "sleeping"})
            assert r.status_code == 400

            # the backends recover: resubmit over HTTP and from the CLI
            healthy.update(alpha=True, beta=True)
            r = await gw.http.post("/v1/tasks/a1/resubmit", json={})
            assert r.status_code == 201, r.text
            assert (r.json()["task_id"], r.json()["resubmit_of"]) == ("a1-r1", "a1")
            again = await gw.http.post("/v1/tasks/a1/resubmit", json={})
            assert (again.status_code, again.json()["task_id"]) == (200, "a1-r1")
            code, out = await _cli(bus_settings, "resubmit", "b1", "--max-attempts", "5")
            assert code == 0 and '"b1-r1"' in out

            a2 = await s.client.wait("a1-r1", timeout_s=20)
            b2 = await s.client.wait("b1-r1", timeout_s=20)
            assert (a2.status, a2.resubmit_of, a2.max_attempts) == ("succeeded", "a1", 2)
            assert (b2.status, b2.max_attempts) == ("succeeded", 5)
            assert (await s.client.get("a1")).status == "dead"  # ends exactly once
            assert (await s.client.dead_tasks()).total == 0  # they left the index

            with pytest.raises(ConflictError):
                await s.client.resubmit("a1-r1")  # succeeded: nothing to resubmit
            r = await gw.http.post("/v1/tasks/a1-r1/resubmit", json={})
            assert r.status_code == 409
            with pytest.raises(NotFoundError):
                await s.client.resubmit("nope")
            assert (await gw.http.post("/v1/tasks/nope/resubmit", json={})).status_code == 404
            # a dead resubmitted task dies again under its own id and can go once more
            healthy["alpha"] = False
            again3 = await s.client.resubmit("a1", new_task_id="a1-manual", max_attempts=1)
            assert again3.created and again3.task.task_id == "a1-manual"
            assert (await s.client.wait("a1-manual", timeout_s=20)).status == "dead"
            assert (await s.client.resubmit("a1-manual")).task.task_id == "a1-manual-r1"
            assert s.metric("agentbus_scheduler_tasks_resubmitted_total") == 4
        finally:
            await stop_gateway(gw)


async def _cli(settings: BusSettings, *args: str) -> tuple[int, str]:
    argv = [*args, "--nats-url", settings.nats_url, "--prefix", settings.prefix]
    result = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout


async def _empty(bus: Bus) -> bool:
    return await stream_messages(bus) == 0
