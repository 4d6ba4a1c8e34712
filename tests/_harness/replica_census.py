"""Live replica processes as the OS sees them, sampled in the background.

The process runtime gives each replica its identity in the environment
(``AGENTBUS_AGENT_ID``, ``AGENTBUS_AGENT_NODE_ID``). ``live_replicas(marker)`` scans
``/proc`` for processes whose command line holds ``marker`` (put it in the
deployment's command) and reads those two variables: no bus, no supervisor status,
so it also sees the replicas of a node cut off from the bus. ``Census`` samples it
every ``interval_s`` and keeps every sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

Replica = tuple[int, str]
"""(pid, node id) of one live replica process."""


def live_replicas(marker: str) -> dict[str, list[Replica]]:
    """Agent id to its live processes (pid, node id), for commands holding ``marker``."""
    found: dict[str, list[Replica]] = defaultdict(list)
    needle = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "cmdline").read_bytes():
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or not ours
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if item)
        if agent_id := env.get("AGENTBUS_AGENT_ID"):
            found[agent_id].append((int(proc.name), env.get("AGENTBUS_AGENT_NODE_ID", "")))
    return dict(found)


@dataclass
class Sample:
    started_at: float
    """``time.monotonic()`` when the scan began: what it saw was live after this."""
    at: float
    """``time.monotonic()`` when the scan ended: what it missed was gone before this."""
    replicas: dict[str, list[Replica]]

    def on(self, node_id: str) -> set[int]:
        """Pids of live replicas of ``node_id``."""
        return {pid for procs in self.replicas.values() for pid, n in procs if n == node_id}

    def duplicates(self) -> dict[str, list[Replica]]:
        """Agent ids with more than one live process."""
        return {a: procs for a, procs in self.replicas.items() if len(procs) > 1}


@dataclass
class Census:
    """Samples ``live_replicas(marker)`` every ``interval_s`` while running."""

    marker: str
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Census:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started_at = time.monotonic()
            replicas = await asyncio.to_thread(live_replicas, self.marker)
            self.samples.append(Sample(started_at, time.monotonic(), replicas))
            await asyncio.sleep(self.interval_s)

    def since(self, at: float) -> list[Sample]:
        """The samples whose scan began at or after ``at``."""
        return [s for s in self.samples if s.started_at >= at]

    def duplicates(self) -> list[Sample]:
        """Samples in which some agent id had two live processes."""
        return [s for s in self.samples if s.duplicates()]
