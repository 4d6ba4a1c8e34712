"""ProcessRuntime: real child processes, process groups, exit codes, logs, exec."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest

from agentbus.errors import ContractError
from agentbus.messages import Deployment
from agentbus_supervisor.process_runtime import ProcessRuntime
from agentbus_supervisor.runtime import ReplicaSpec, build_spec
from tests._harness.services import pid_alive

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def runtime() -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(close_grace_s=1.0)
    yield rt
    await rt.close()


def spec(code: str, *, name: str = "proc") -> ReplicaSpec:
    dep = Deployment(name=name, command=[sys.executable, "-c", code], env={"EXTRA": "yes"})
    return build_spec(
        dep, 2, node_id="n1", prefix="tp", nats_url="nats://127.0.0.1:1", runtime="process"
    )


async def test_start_stop_sends_sigterm(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(spec("import time; print('up', flush=True); time.sleep(600)"))
    pid = int(handle.runtime_id)
    assert pid_alive(pid)
    assert os.getpgid(pid) == pid  # its own process group
    waiter = asyncio.create_task(runtime.wait(handle))
    lines = runtime.logs(handle)
    first = await anext(lines)
    assert (first.stream, first.text) == ("stdout", "up")
    await runtime.stop(handle, grace_s=5)
    info = await waiter
    assert info.exit_code == 128 + 15
    assert "SIGTERM" in info.reason
    assert not pid_alive(pid)


async def test_stop_kills_after_grace_when_sigterm_is_ignored(runtime: ProcessRuntime) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    handle = await runtime.start(spec(code))
    assert (await anext(runtime.logs(handle))).text == "ready"
    waiter = asyncio.create_task(runtime.wait(handle))
    await runtime.stop(handle, grace_s=0.3)
    info = await waiter
    assert info.exit_code == 128 + 9


async def test_exit_code_env_and_output(runtime: ProcessRuntime) -> None:
    code = (
        "import os, sys\n"
        "print(os.environ['AGENTBUS_AGENT_ID'], os.environ['AGENTBUS_AGENT_REPLICA'])\n"
        "print(os.environ['EXTRA'], os.environ.get('SUPERVISOR_NODE_ID', '-'), file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    os.environ["SUPERVISOR_NODE_ID"] = "leaky"  # the supervisor's own settings stay private
    try:
        handle = await runtime.start(spec(code))
    finally:
        del os.environ["SUPERVISOR_NODE_ID"]
    lines = [line async for line in runtime.logs(handle)]
    info = await runtime.wait(handle)
    assert info.exit_code == 3
    assert sorted((x.stream, x.text) for x in lines) == [
        ("stderr", "yes -"),
        ("stdout", "proc-2 2"),
    ]
    await runtime.stop(handle, grace_s=1)


async def test_missing_command_and_executable_are_contract_errors(
    runtime: ProcessRuntime,
) -> None:
    no_cmd = build_spec(
        Deployment(name="img", image="x"),
        0,
        node_id="n",
        prefix="p",
        nats_url="u",
        runtime="process",
    )
    with pytest.raises(ContractError):
        await runtime.start(no_cmd)
    bad = build_spec(
        Deployment(name="bad", command=["/nonexistent/agent"]),
        0,
        node_id="n",
        prefix="p",
        nats_url="u",
        runtime="process",
    )
    with pytest.raises(ContractError):
        await runtime.start(bad)


async def test_close_stops_children() -> None:
    rt = ProcessRuntime(close_grace_s=1.0)
    handle = await rt.start(spec("import time; time.sleep(600)"))
    pid = int(handle.runtime_id)
    assert await rt.list_own() == []  # no adoption across supervisor restarts
    await rt.close()
    assert not pid_alive(pid)


async def test_agent_settings_read_the_replica_env(runtime: ProcessRuntime) -> None:
    code = (
        "from agentbus.settings import AgentSettings, BusSettings\n"
        "s, b = AgentSettings(), BusSettings()\n"
        "print(s.agent_id, s.node_id, s.deployment, s.replica, s.capabilities,"
        " s.max_concurrency, b.prefix, b.nats_url)\n"
    )
    dep = Deployment(
        name="agent",
        command=[sys.executable, "-c", code],
        capabilities=["a", "b"],
        max_concurrency=4,
    )
    handle = await runtime.start(
        build_spec(
            dep, 1, node_id="n7", prefix="tp", nats_url="nats://127.0.0.1:9", runtime="process"
        )
    )
    lines = [line.text async for line in runtime.logs(handle)]
    assert (await runtime.wait(handle)).exit_code == 0
    assert lines == ["agent-1 n7 agent 1 a,b 4 tp nats://127.0.0.1:9"]


async def test_exec_runs_with_the_replica_env_and_times_out(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(spec("import time; time.sleep(600)"))
    ok = await runtime.exec(
        handle, [sys.executable, "-c", "import os; print(os.environ['EXTRA'])"], timeout_s=10
    )
    assert (ok.exit_code, ok.output) == (0, "yes")
    bad = await runtime.exec(handle, [sys.executable, "-c", "raise SystemExit(4)"], timeout_s=10)
    assert bad.exit_code == 4
    slow = await runtime.exec(
        handle, [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5
    )
    assert slow.exit_code is None
    assert "timed out" in slow.output
    missing = await runtime.exec(handle, ["/nonexistent/probe"], timeout_s=5)
    assert missing.exit_code is None
    await runtime.stop(handle, grace_s=1)
