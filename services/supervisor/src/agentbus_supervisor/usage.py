"""What running replicas use: CPU (in cores) and resident memory, measured in the background.

A ``UsageSampler`` asks the runtime (``Runtime.usage``) about every running replica
each ``usage_sample_s`` seconds and keeps the last answer per runtime id; the
``status`` endpoint reads it (``ReplicaStatus.cpu_cores``, ``memory_bytes``) and
never waits for a measurement.

The computations are pure functions here:

- processes (``psutil``): the replica process and its descendants. CPU is the
  difference of their CPU seconds (user + system, plus those of children already
  reaped) over the wall-clock time between two samples (``cores_between``);
  memory is the sum of their resident set sizes (pages they share count once per
  process). Finding descendants means reading every process's parent from ``/proc``;
  a ``ProcessTable`` does that once per sampling round for all replicas, not once
  per replica (which, with 100 idle replicas, was most of an idle supervisor's CPU).
- containers (the Engine API's one-shot ``stats``): CPU by Docker's formula,
  ``(cpu_stats.cpu_usage.total_usage - precpu_stats...) / (cpu_stats.system_cpu_usage
  - precpu_stats...) * online_cpus`` (``docker_cpu_cores``); memory is
  ``memory_stats.usage`` less the page cache, as ``docker stats`` counts it
  (``docker_memory_bytes``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil
from loguru import logger

from agentbus.errors import AgentBusError
from agentbus_supervisor.runtime import ReplicaHandle, Runtime, Usage

_CACHE_KEYS = ("total_inactive_file", "inactive_file", "cache")
"""Page cache in ``memory_stats.stats``: cgroup v1 (as ``docker stats``), v2, old v1."""


@dataclass(frozen=True)
class CpuMark:
    """A process tree's CPU seconds at a moment (``monotonic_s``: ``time.monotonic``)."""

    monotonic_s: float
    cpu_s: float


def cores_between(before: CpuMark | None, after: CpuMark) -> float | None:
    """Cores used between two marks (None without an earlier mark or elapsed time)."""
    if before is None or after.monotonic_s <= before.monotonic_s:
        return None
    used_s = max(after.cpu_s - before.cpu_s, 0.0)  # a child reaped in between may lose time
    return used_s / (after.monotonic_s - before.monotonic_s)


class ProcessTable:
    """Children of every process, read from ``/proc`` at most once per ``max_age_s``.

    Thread-safe: the replicas of one sampling round (``asyncio.to_thread``) share one
    read. A process started since the last read is missed until the next one.
    """

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._children: dict[int, list[int]] = {}

    def descendants(self, pid: int) -> list[int]:
        """Pids of the descendants of ``pid`` (children first), as last read."""
        with self._lock:
            if time.monotonic() - self._read_at > self.max_age_s:
                self._children = {}
                for proc in psutil.process_iter(["ppid"]):
                    self._children.setdefault(proc.info["ppid"], []).append(proc.pid)
                self._read_at = time.monotonic()
            children = self._children
        found, todo = [], list(children.get(pid, []))
        while todo:
            child = todo.pop(0)
            found.append(child)
            todo.extend(children.get(child, []))
        return found


def process_tree(pid: int, table: ProcessTable | None = None) -> tuple[float, int]:
    """``(cpu_s, rss_bytes)`` of process ``pid`` and all its descendants.

    ``cpu_s`` is user + system time of each, plus that of the children the process
    already reaped. Descendants that end while being read are skipped. ``table``:
    where descendants are looked up (default: a fresh read of ``/proc``).

    Raises:
        psutil.NoSuchProcess: ``pid`` itself is gone.
        psutil.AccessDenied: ``pid`` cannot be read.
    """
    leader = psutil.Process(pid)
    with leader.oneshot():
        times = leader.cpu_times()
        cpu_s = times.user + times.system + times.children_user + times.children_system
        rss = leader.memory_info().rss
    children = []
    for child_pid in (table or ProcessTable()).descendants(pid):
        try:
            children.append(psutil.Process(child_pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for child in children:
        try:
            with child.oneshot():
                t = child.cpu_times()
                cpu_s, rss = cpu_s + t.user + t.system, rss + child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return cpu_s, rss


def docker_cpu_cores(stats: Mapping[str, Any]) -> float | None:
    """Cores a container used between ``precpu_stats`` and ``cpu_stats`` of one stats answer.

    Docker's formula (Engine API, "Get container stats"): the container's CPU time
    delta over the host's, times the online CPUs (``percpu_usage``'s length on
    daemons that omit ``online_cpus``). None when the answer has no earlier sample
    (a stopped container, or a one-shot answer).
    """
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    pre_total = (pre.get("cpu_usage") or {}).get("total_usage")
    system, pre_system = cpu.get("system_cpu_usage"), pre.get("system_cpu_usage")
    if total is None or pre_total is None or system is None or not pre_system:
        return None
    system_delta = float(system) - float(pre_system)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    if system_delta <= 0 or not online:
        return None
    return max(float(total) - float(pre_total), 0.0) / system_delta * int(online)


def docker_memory_bytes(stats: Mapping[str, Any]) -> int | None:
    """A container's memory use less its page cache, as ``docker stats`` shows it.

    ``memory_stats.usage`` minus ``stats.total_inactive_file`` (cgroup v1), else
    ``stats.inactive_file`` (cgroup v2), else ``stats.cache`` (older v1 engines),
    when that is below the usage. None when the answer has no usage (stopped).
    """
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if usage is None:
        return None
    detail = memory.get("stats") or {}
    for key in _CACHE_KEYS:
        if (cache := detail.get(key)) is not None:
            return int(usage - cache) if cache < usage else int(usage)
    return int(usage)


class UsageSampler:
    """Measures the running replicas every ``interval_s`` seconds (see module doc).

    ``running`` gives the handles of the running replicas; ``runtime.usage``
    measures one; ``on_failure`` is called once per failed measurement (a metric).
    """

    def __init__(
        self,
        interval_s: float,
        runtime: Runtime,
        running: Callable[[], Iterable[ReplicaHandle]],
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.interval_s = interval_s
        self.runtime = runtime
        self._running = running
        self._on_failure = on_failure
        self._last: dict[str, Usage] = {}

    def of(self, handle: ReplicaHandle | None) -> Usage | None:
        """The last measurement of the replica of ``handle`` (None if there is none)."""
        return self._last.get(handle.runtime_id) if handle is not None else None

    async def sample(self) -> None:
        """Measure each running replica once, concurrently; forget the others."""
        handles = {h.runtime_id: h for h in self._running() if h.runtime_id}
        ids = sorted(handles)
        results = await asyncio.gather(*(self._one(handles[i]) for i in ids))
        self._last = {i: u for i, u in zip(ids, results, strict=True) if u is not None}

    async def _one(self, handle: ReplicaHandle) -> Usage | None:
        try:
            return await self.runtime.usage(handle)
        except AgentBusError as exc:
            self._on_failure()
            logger.debug("replica usage not measured", agent_id=handle.agent_id, error=str(exc))
            return None

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every ``interval_s`` until ``stop`` is set (nothing if it is 0)."""
        if self.interval_s <= 0:
            return
        while not stop.is_set():
            try:
                await self.sample()
            except Exception:
                logger.exception("replica usage sampling failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
