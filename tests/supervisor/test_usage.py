"""Replica CPU and memory: the computations, and measured in the supervisor's status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.messages import Deployment
from agentbus_supervisor.process_runtime import ProcessRuntime
from agentbus_supervisor.runtime import ReplicaSpec
from agentbus_supervisor.usage import (
    CpuMark,
    ProcessTable,
    UsageSampler,
    cores_between,
    docker_cpu_cores,
    docker_memory_bytes,
)
from tests._harness.polling import eventually
from tests._harness.supervisor import (
    BASE_IMAGE,
    docker_settings,
    place,
    process_settings,
    put_deployment,
    replica_where,
    running_supervisor,
)

pytestmark = pytest.mark.timeout(90)
BURN_IN_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])",
]
"""A replica whose CPU goes to a child process: the measure covers descendants."""
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
SLEEP_IN_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])",
]


def test_cores_between_two_marks() -> None:
    assert cores_between(None, CpuMark(monotonic_s=10.0, cpu_s=3.0)) is None
    before = CpuMark(monotonic_s=10.0, cpu_s=3.0)
    assert cores_between(before, CpuMark(monotonic_s=12.0, cpu_s=4.0)) == pytest.approx(0.5)
    assert cores_between(before, CpuMark(monotonic_s=10.0, cpu_s=4.0)) is None  # no time
    assert cores_between(before, CpuMark(monotonic_s=11.0, cpu_s=2.0)) == 0.0  # never negative


def _docker_stats(**cpu: Any) -> dict[str, Any]:
    """A stats answer: 0.4 s of CPU over 1 s of host time on 4 CPUs (the host's delta
    counts every CPU: 4 s)."""
    return {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 1_400_000_000, "percpu_usage": [1, 1, 1, 1]},
            "system_cpu_usage": 104_000_000_000,
            "online_cpus": 4,
        }
        | cpu,
        "precpu_stats": {
            "cpu_usage": {"total_usage": 1_000_000_000},
            "system_cpu_usage": 100_000_000_000,
            "online_cpus": 4,
        },
    }


def test_docker_cpu_cores_by_dockers_formula() -> None:
    assert docker_cpu_cores(_docker_stats()) == pytest.approx(0.4)
    # An older daemon without online_cpus: the length of percpu_usage.
    assert docker_cpu_cores(_docker_stats(online_cpus=None)) == pytest.approx(0.4)
    # No earlier sample (one-shot, or a container just started): unknown.
    first = _docker_stats()
    first["precpu_stats"] = {"cpu_usage": {"total_usage": 0}}
    assert docker_cpu_cores(first) is None
    assert docker_cpu_cores({}) is None  # a stopped container


def test_docker_memory_less_page_cache() -> None:
    def mem(**stats: int) -> dict[str, Any]:
        return {"memory_stats": {"usage": 100_000, "stats": stats}}

    assert docker_memory_bytes(mem(total_inactive_file=30_000, cache=50_000)) == 70_000  # v1
    assert docker_memory_bytes(mem(inactive_file=20_000)) == 80_000  # cgroup v2
    assert docker_memory_bytes(mem(cache=40_000)) == 60_000  # older v1 engines
    assert docker_memory_bytes(mem(total_inactive_file=200_000)) == 100_000  # never below 0
    assert docker_memory_bytes(mem()) == 100_000
    assert docker_memory_bytes({"memory_stats": {}}) is None  # a stopped container


async def test_process_table_finds_the_descendants_of_a_process() -> None:
    parent = await asyncio.create_subprocess_exec(*SLEEP_IN_CHILD, start_new_session=True)
    try:
        table = ProcessTable(max_age_s=0.0)  # a fresh read of /proc on every lookup
        found = await eventually(
            lambda: table.descendants(parent.pid) or None, what="the child started"
        )
        assert len(found) == 1
        assert table.descendants(found[0]) == []
        shared = ProcessTable()  # read once, for every lookup of the next second
        assert shared.descendants(parent.pid) == found
        assert shared.descendants(found[0]) == []
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child is in its session
        await parent.wait()


async def test_process_runtime_measures_the_process_tree() -> None:
    runtime = ProcessRuntime()
    spec = ReplicaSpec(
        deployment="burn", replica=0, agent_id="burn-0", image=None, command=tuple(BURN_IN_CHILD)
    )
    handle = await runtime.start(spec)
    sampler = UsageSampler(0.1, runtime, lambda: [handle])
    try:
        await sampler.sample()
        first = sampler.of(handle)
        assert first is not None
        assert first.cpu_cores is None  # nothing to compare with yet
        assert first.memory_bytes is not None and first.memory_bytes > 0

        async def _burning() -> bool:
            await sampler.sample()
            usage = sampler.of(handle)
            return usage is not None and (usage.cpu_cores or 0.0) > 0.3

        await eventually(_burning, timeout_s=20, every_s=0.3)
        await runtime.stop(handle, 1.0)
        await sampler.sample()  # a replica that ended is forgotten, and counted
        assert sampler.of(handle) is None
    finally:
        await runtime.close()


async def test_status_reports_measured_cpu_and_memory_of_processes(bus: Bus, node_id: str) -> None:
    await put_deployment(bus, Deployment(name="burner", command=BURN_IN_CHILD))
    await put_deployment(bus, Deployment(name="sleeper", command=SLEEP))
    await place(bus, "burner", 0, node_id)
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id, usage_sample_s=0.3)):
        burner = await eventually(
            replica_where(
                bus, node_id, lambda r: r.agent_id == "burner-0" and (r.cpu_cores or 0) > 0.3
            ),
            timeout_s=30,
        )
        assert burner.memory_bytes is not None and burner.memory_bytes > 0
        sleeper = await eventually(
            replica_where(
                bus, node_id, lambda r: r.agent_id == "sleeper-0" and r.cpu_cores is not None
            )
        )
        assert sleeper.memory_bytes is not None and sleeper.memory_bytes > 0


async def test_no_usage_when_sampling_is_off(bus: Bus, node_id: str) -> None:
    await put_deployment(bus, Deployment(name="sleeper", command=SLEEP))
    await place(bus, "sleeper", 0, node_id)
    async with running_supervisor(bus, process_settings(node_id, usage_sample_s=0)):
        running = await eventually(replica_where(bus, node_id, lambda r: r.state == "running"))
        assert running.cpu_cores is None
        assert running.memory_bytes is None


@pytest.mark.docker
@pytest.mark.timeout(120)
async def test_status_reports_measured_cpu_and_memory_of_containers(
    bus: Bus, node_containers: str
) -> None:
    node_id = node_containers
    burn = Deployment(
        name="burner", image=BASE_IMAGE, image_command=["sh", "-c", "while :; do :; done"]
    )
    await put_deployment(bus, burn)
    await place(bus, "burner", 0, node_id)
    settings = docker_settings(node_id, docker_network="none", usage_sample_s=0.5)
    async with running_supervisor(bus, settings):
        burner = await eventually(
            replica_where(bus, node_id, lambda r: (r.cpu_cores or 0) > 0.3), timeout_s=60
        )
        assert burner.memory_bytes is not None and burner.memory_bytes > 0
