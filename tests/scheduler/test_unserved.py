"""A task for a capability nobody serves is visible: gauge, event, listing, submit, wait."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.errors import ConflictError, ContractError, RequestTimeoutError
from agentbus.messages import TaskEvent, TasksReply, encode
from agentbus.settings import BusSettings
from agentbus_registry.settings import RegistrySettings
from tests._harness.polling import eventually
from tests._harness.registry import agent_info, start_registry
from tests._harness.work_stream import scheduler

pytestmark = pytest.mark.nats
UNSERVED = "agentbus_scheduler_tasks_unserved"


async def _heartbeat(bus: Bus, agent_id: str, capabilities: list[str]) -> None:
    kv = await bus.kv(bus.names.agents_bucket)
    await kv.put(agent_id, encode(agent_info(agent_id, capabilities)))


async def _cli(settings: BusSettings, *args: str) -> tuple[int, str, str]:
    argv = [*args, "--nats-url", settings.nats_url, "--prefix", settings.prefix]
    result = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


async def test_require_agent_refuses_a_capability_nobody_serves(
    bus: Bus, bus_settings: BusSettings
) -> None:
    await _heartbeat(bus, "w-1", ["work"])
    async with scheduler(bus) as sched:
        with pytest.raises(ConflictError, match="no live agent serves capability 'nobody'"):
            await sched.client.submit("nobody", 1, task_id="refused", require_agent=True)
        with pytest.raises(Exception, match="not found"):
            await sched.client.get("refused")  # nothing was written
        served = await sched.client.submit("work", 1, task_id="served", require_agent=True)
        assert served.status == "queued"
        # without the option a task for nobody is queued as before
        assert (await sched.client.submit("nobody", 1, task_id="waits")).status == "queued"
        batch = [await sched.client.build_task("nobody", 1, require_agent=True)]
        with pytest.raises(ConflictError):
            await sched.client.submit_many(batch)
        code, _, err = await _cli(bus_settings, "submit", "nobody", "1", "--require-agent")
        assert code == 1 and "no live agent serves capability 'nobody'" in err


async def test_unserved_tasks_are_gauged_and_warned_once(bus: Bus) -> None:
    await _heartbeat(bus, "w-1", ["work"])
    async with scheduler(bus, unserved_warn_s=1.0) as sched:
        await sched.client.submit("nobody", 1, task_id="lonely")
        await sched.client.submit("nobody", 2, task_id="lonely-2", priority=5)
        await sched.client.submit("work", 3, task_id="served")

        def gauged() -> bool:
            return sched.metric(UNSERVED, {"capability": "nobody"}) == 2

        await eventually(gauged, what="the unserved gauge")
        assert sched.metric(UNSERVED, {"capability": "work"}) == 0
        subject = bus.names.task_event_subject("unserved", "lonely")

        async def warned() -> TaskEvent | None:
            try:
                raw = await bus.js.get_last_msg(bus.names.events_stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            return msgspec.json.decode(raw.data or b"", type=TaskEvent)

        event = await eventually(warned, what="the unserved event")
        assert event.status == "queued" and "capability 'nobody'" in event.reason
        sweeps = sched.metric("agentbus_scheduler_sweeps_total")
        await eventually(
            lambda: sched.metric("agentbus_scheduler_sweeps_total") >= sweeps + 3,
            what="three more sweeps",
        )
        info = await bus.js.stream_info(
            bus.names.events_stream, subjects_filter=bus.names.task_event_subject("unserved", ">")
        )
        assert info.state.subjects == {
            subject: 1,
            bus.names.task_event_subject("unserved", "lonely-2"): 1,
        }
        history = await sched.client.history("lonely")
        assert [e.status for e in history] == ["queued", "queued"]
        assert sched.metric("agentbus_scheduler_unserved_warnings_total") == 2
        # an agent turns up: the gauge clears
        await _heartbeat(bus, "n-1", ["nobody"])
        await eventually(
            lambda: sched.metric(UNSERVED, {"capability": "nobody"}) == 0, what="cleared"
        )


async def test_tasks_listed_by_status_capability_parent_with_paging(
    bus: Bus, bus_settings: BusSettings
) -> None:
    async with scheduler(bus) as sched:
        client = sched.client
        ids = [f"q{i}" for i in range(5)]
        for task_id in ids:
            await client.submit("nobody", 1, task_id=task_id)
        await client.submit("other", 1, task_id="o1")
        await client.submit("nobody", 1, task_id="child", parent_id="q0")
        await client.cancel("q4", recursive=False)

        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            page = await client.list_tasks("queued", capability="nobody", limit=2, cursor=cursor)
            assert len(page.tasks) <= 2 and {t.status for t in page.tasks} <= {"queued"}
            seen += [t.task_id for t in page.tasks]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == ["child", "q0", "q1", "q2", "q3"]
        children = await client.list_tasks(None, parent_id="q0")
        assert [t.task_id for t in children.tasks] == ["child"]
        cancelled = await client.list_tasks("cancelled")
        assert [t.task_id for t in cancelled.tasks] == ["q4"]
        every = await client.list_tasks(None, limit=1000)
        assert {t.task_id for t in every.tasks} == {*ids, "o1", "child"}
        with pytest.raises(ContractError):
            await client.list_tasks("queued", cursor="not-a-cursor")
        assert (await client.dead_tasks()).tasks == []

        code, out, _ = await _cli(
            bus_settings, "tasks", "--status", "queued", "--capability", "other", "--json"
        )
        assert code == 0
        reply = msgspec.json.decode(out, type=TasksReply)
        assert [t.task_id for t in reply.tasks] == ["o1"] and reply.next_cursor is None
        code, out, _ = await _cli(bus_settings, "tasks", "--status", "queued", "--limit", "1")
        assert code == 0 and "q1" in out and "--cursor" in out  # q0 was written again
        code, _, _ = await _cli(bus_settings, "tasks", "--status", "bogus")
        assert code == 2


async def test_a_wait_that_runs_out_says_where_the_task_is(
    bus: Bus, bus_settings: BusSettings
) -> None:
    stop = asyncio.Event()
    registry = await start_registry(bus, RegistrySettings(), stop)
    try:
        async with scheduler(bus) as sched:
            await sched.client.submit("nobody", 1, task_id="stuck")
            with pytest.raises(RequestTimeoutError) as caught:
                await sched.client.wait("stuck", timeout_s=0.3)
            assert str(caught.value) == (
                "task stuck is still queued: no live agent serves capability 'nobody' "
                "(see `agentbus agents`)"
            )
            await _heartbeat(bus, "n-1", ["nobody"])
            await eventually(lambda: _served(sched.client), what="the registry sees n-1")
            with pytest.raises(RequestTimeoutError, match="task stuck is still queued after"):
                await sched.client.wait("stuck", timeout_s=0.3)
            code, _, err = await _cli(
                bus_settings, "submit", "ghost", "1", "--wait", "--timeout-s", "0.3"
            )
            assert code == 1 and "no live agent serves capability 'ghost'" in err
    finally:
        stop.set()
        await asyncio.wait_for(registry.task, 10)


async def _served(client: object) -> bool:
    return bool(await client.agents("nobody"))  # type: ignore[attr-defined]
