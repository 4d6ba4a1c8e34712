"""Listener processes for the event tests: start, SIGKILL, read what they handled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentbus.bus import Bus
from agentbus.messages import AgentInfo
from tests._harness.polling import eventually


@dataclass
class Listeners:
    """Listener processes of one test; every one is killed at the end."""

    nats_url: str
    prefix: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    """Pids of processes killed with SIGKILL."""

    @property
    def out(self) -> Path:
        return self.tmp / "handled.jsonl"

    def start(self, agent_id: str, deployment: str | None = "listeners", **env: str) -> int:
        full = {
            **os.environ,
            "AGENTBUS_NATS_URL": self.nats_url,
            "AGENTBUS_PREFIX": self.prefix,
            "AGENTBUS_AGENT_ID": agent_id,
            "AGENTBUS_AGENT_LEASE_S": "2",
            "AGENTBUS_AGENT_HEARTBEAT_S": "0.5",
            "AGENTBUS_AGENT_STOP_GRACE_S": "2",
            "EV_OUT": str(self.out),
            **self.env,
            **env,
        }
        if deployment:
            full["AGENTBUS_AGENT_DEPLOYMENT"] = deployment
        with (self.tmp / f"{agent_id}.log").open("ab") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "tests._harness.event_listener"],
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(p)
        return p.pid

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.killed.add(pid)
        next(p for p in self.procs if p.pid == pid).wait(5)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def handled(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in self.tmp.glob("*.log"))


@contextmanager
def listeners(nats_url: str, prefix: str, tmp: Path, **env: str) -> Iterator[Listeners]:
    group = Listeners(nats_url, prefix, tmp, env=dict(env))
    try:
        yield group
    finally:
        group.stop_all()


async def registered(bus: Bus, agents: dict[str, int], timeout_s: float = 30.0) -> None:
    """Wait until each agent id is registered by its process (its subscriptions are bound).

    ``agents`` maps agent id to the pid of the process that must run it.
    """
    kv = await bus.kv(bus.names.agents_bucket)

    async def all_in() -> bool:
        for agent_id, pid in agents.items():
            try:
                entry = await kv.get(agent_id)
            except Exception:
                return False
            if entry.value is None:
                return False
            info = bus_decode(entry.value)
            if info.pid != pid or info.status not in ("ready", "busy"):
                return False
        return True

    await eventually(all_in, timeout_s=timeout_s, every_s=0.2, what=f"{sorted(agents)} registered")


def bus_decode(data: bytes) -> AgentInfo:
    import msgspec

    return msgspec.json.decode(data, type=AgentInfo)
