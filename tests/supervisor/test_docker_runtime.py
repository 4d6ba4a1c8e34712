"""DockerRuntime against the real engine: start/stop, labels, limits, exits, logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiodocker
import pytest

from agentbus.errors import ConflictError, ContractError
from agentbus.messages import Deployment, utcnow
from agentbus.messages.fleet import Limits
from agentbus_supervisor.docker_runtime import NOBODY, DockerRuntime
from agentbus_supervisor.runtime import ReplicaSpec, build_spec
from tests._harness.supervisor import BASE_IMAGE, SLEEP_CMD, TEST_LABELS

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]
PREFIX = "tsup"


@pytest.fixture
async def runtime(docker: aiodocker.Docker, node_containers: str) -> AsyncIterator[DockerRuntime]:
    rt = await DockerRuntime.connect(
        node_id=node_containers, prefix=PREFIX, network="none", extra_labels=TEST_LABELS
    )
    yield rt
    await rt.close()


NODE_LIMITS = Limits(memory_bytes=128 * 1024 * 1024, cpus=1.0, pids=64)


def spec(
    node_id: str,
    command: list[str],
    *,
    name: str = "sleepy",
    replica: int = 0,
    limits: Limits = NODE_LIMITS,
    image: str = BASE_IMAGE,
) -> ReplicaSpec:
    dep = Deployment(
        name=name, image=image, image_command=command, capabilities=["echo", "x"], limits=limits
    )
    return build_spec(
        dep,
        replica,
        node_id=node_id,
        prefix=PREFIX,
        nats_url="nats://127.0.0.1:1",
        runtime="docker",
        default_limits=NODE_LIMITS,
    )


async def test_start_sets_labels_limits_and_env_then_stop_removes(
    runtime: DockerRuntime, docker: aiodocker.Docker, node_id: str
) -> None:
    handle = await runtime.start(spec(node_id, SLEEP_CMD))
    info = await docker.containers.container(handle.runtime_id).show()
    assert info["Name"] == f"/{PREFIX}-{node_id}-sleepy-0"
    assert info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels["agentbus.managed"] == "1"
    assert labels["agentbus.node"] == node_id
    assert labels["agentbus.prefix"] == PREFIX
    assert labels["agentbus.deployment"] == "sleepy"
    assert labels["agentbus.replica"] == "0"
    assert labels["agentbus.agent_id"] == "sleepy-0"
    assert labels["agentbus.test"] == "1"
    host = info["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 128 * 1024 * 1024
    assert host["MemorySwap"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert host["NetworkMode"] == "none"
    assert info["Config"]["User"] == NOBODY  # the base image runs as root: not here
    assert not info["Mounts"]
    assert not host.get("Binds")
    assert "docker.sock" not in str(info)
    assert "DOCKER_HOST" not in str(info["Config"]["Env"])
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["AGENTBUS_AGENT_ID"] == "sleepy-0"
    assert env["AGENTBUS_AGENT_NODE_ID"] == node_id
    assert env["AGENTBUS_AGENT_DEPLOYMENT"] == "sleepy"
    assert env["AGENTBUS_AGENT_REPLICA"] == "0"
    assert env["AGENTBUS_AGENT_CAPABILITIES"] == "echo,x"
    assert env["AGENTBUS_AGENT_MAX_CONCURRENCY"] == "1"
    assert env["AGENTBUS_PREFIX"] == PREFIX
    assert env["AGENTBUS_NATS_URL"] == "nats://127.0.0.1:1"

    waiter = asyncio.create_task(runtime.wait(handle))
    await runtime.stop(handle, grace_s=5)
    exit_info = await waiter
    assert exit_info.exit_code == 143  # SIGTERM reached python through the init process
    with pytest.raises(aiodocker.DockerError) as err:
        await docker.containers.container(handle.runtime_id).show()
    assert err.value.status == 404


async def test_list_own_sees_only_this_node_and_prefix(
    runtime: DockerRuntime,
    node_id: str,
    make_container: Callable[..., Awaitable[str]],
) -> None:
    foreign_node = await make_container(
        {"agentbus.managed": "1", "agentbus.node": "other-node", "agentbus.prefix": PREFIX}
    )
    foreign_prefix = await make_container(
        {"agentbus.managed": "1", "agentbus.node": node_id, "agentbus.prefix": "otherp"}
    )
    mine = await runtime.start(spec(node_id, SLEEP_CMD, replica=3))
    own = await runtime.list_own()
    assert [h.runtime_id for h in own] == [mine.runtime_id]
    assert own[0].deployment == "sleepy"
    assert own[0].replica == 3
    assert own[0].running
    assert own[0].adopted
    assert own[0].digest == mine.digest
    assert foreign_node not in {h.runtime_id for h in own}
    assert foreign_prefix not in {h.runtime_id for h in own}
    await runtime.stop(mine, grace_s=1)


async def test_exit_code_and_logs(runtime: DockerRuntime, node_id: str) -> None:
    cmd = ["python3", "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(7)"]
    handle = await runtime.start(spec(node_id, cmd))
    lines = [line async for line in runtime.logs(handle)]
    info = await runtime.wait(handle)
    assert info.exit_code == 7
    assert not info.oom_killed
    assert [(x.stream, x.text) for x in lines if x.stream == "stdout"] == [("stdout", "one")]
    assert [(x.stream, x.text) for x in lines if x.stream == "stderr"] == [("stderr", "two")]
    assert all(abs((x.at - utcnow()).total_seconds()) < 120 for x in lines)  # engine stamps
    await runtime.stop(handle, grace_s=1)


async def test_oom_kill_is_reported(runtime: DockerRuntime, node_id: str) -> None:
    cmd = ["python3", "-c", "b = bytearray(1024 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"]
    handle = await runtime.start(spec(node_id, cmd))
    info = await runtime.wait(handle)
    assert info.oom_killed
    assert info.exit_code == 137
    await runtime.stop(handle, grace_s=1)


async def test_missing_image_is_a_contract_error(runtime: DockerRuntime, node_id: str) -> None:
    dep = Deployment(name="ghost", image="agentbus-test/does-not-exist:never")
    bad = build_spec(
        dep, 0, node_id=node_id, prefix=PREFIX, nats_url="nats://x:1", runtime="docker"
    )
    with pytest.raises(ContractError, match="not found"):
        await runtime.start(bad)


async def test_kill_then_restart_replaces_the_container(
    runtime: DockerRuntime, docker: aiodocker.Docker, node_id: str
) -> None:
    first = await runtime.start(spec(node_id, SLEEP_CMD))
    await runtime.kill(first)
    assert (await runtime.wait(first)).exit_code == 137
    second = await runtime.start(spec(node_id, SLEEP_CMD))
    assert second.runtime_id != first.runtime_id
    assert [h.runtime_id for h in await runtime.list_own()] == [second.runtime_id]
    await runtime.stop(second, grace_s=1)


async def test_a_foreign_container_holding_the_name_is_a_conflict(
    runtime: DockerRuntime, docker: aiodocker.Docker, node_id: str
) -> None:
    name = runtime.container_name("sleepy", 0)
    foreign = await docker.containers.create(
        {
            "Image": BASE_IMAGE,
            "Cmd": SLEEP_CMD,
            "Labels": {**TEST_LABELS, "agentbus.node": node_id},
        },
        name=name,
    )
    try:
        with pytest.raises(ConflictError, match="not managed by this node"):
            await runtime.start(spec(node_id, SLEEP_CMD))
        assert (await foreign.show())["Id"] == foreign.id  # left alone
    finally:
        await foreign.delete(force=True)


async def test_deployment_limits_override_the_node_defaults(
    runtime: DockerRuntime, docker: aiodocker.Docker, node_id: str
) -> None:
    own = Limits(memory_bytes=64 * 1024 * 1024, cpus=0.5, pids=32)
    handle = await runtime.start(spec(node_id, SLEEP_CMD, limits=own))
    host = (await docker.containers.container(handle.runtime_id).show())["HostConfig"]
    assert (host["Memory"], host["MemorySwap"]) == (64 * 1024 * 1024, 64 * 1024 * 1024)
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 32
    # The PID limit holds: a fork bomb in the container stops at 32 processes.
    fork = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
    )
    result = await runtime.exec(handle, ["python3", "-c", fork], timeout_s=30)
    assert result.exit_code == 0
    assert int(result.output.splitlines()[-1]) < 32
    await runtime.stop(handle, grace_s=1)


async def test_image_user_is_kept_when_not_root(
    runtime: DockerRuntime, docker: aiodocker.Docker, node_id: str, agent_image: str
) -> None:
    handle = await runtime.start(spec(node_id, SLEEP_CMD, image=agent_image))
    info = await docker.containers.container(handle.runtime_id).show()
    assert info["Config"]["User"] == "10001:10001"
    result = await runtime.exec(handle, ["id", "-u"], timeout_s=10)
    assert (result.exit_code, result.output) == (0, "10001")
    await runtime.stop(handle, grace_s=1)


async def test_exec_exit_codes_output_and_timeout(runtime: DockerRuntime, node_id: str) -> None:
    handle = await runtime.start(spec(node_id, SLEEP_CMD))
    ok = await runtime.exec(handle, ["python3", "-c", "print('fine')"], timeout_s=20)
    assert (ok.exit_code, ok.output) == (0, "fine")
    bad = await runtime.exec(
        handle, ["python3", "-c", "import sys; sys.exit('broken')"], timeout_s=20
    )
    assert bad.exit_code == 1
    assert "broken" in bad.output
    slow = await runtime.exec(handle, ["python3", "-c", "import time; time.sleep(60)"], 1.0)
    assert slow.exit_code is None
    missing = await runtime.exec(handle, ["/nonexistent/probe"], timeout_s=20)
    assert missing.exit_code not in (0, None)
    await runtime.stop(handle, grace_s=1)


async def test_long_lines_come_in_pieces(runtime: DockerRuntime, node_id: str) -> None:
    code = "print('x' * 20000); print('end')"
    handle = await runtime.start(spec(node_id, ["python3", "-c", code]))
    lines = [line.text async for line in runtime.logs(handle)]
    await runtime.wait(handle)
    assert lines[-1] == "end"
    assert "".join(lines[:-1]) == "x" * 20000
    assert max(len(x) for x in lines) <= runtime.log_line_max_bytes
    await runtime.stop(handle, grace_s=1)
