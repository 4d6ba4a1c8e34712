"""CPU that idle agents spend on ``TasksReady`` notices (the ready-notice herd).

Starts its own nats-server and ``--agents`` echo agent *processes* (``python -m
agentbus.agents.echo``, max concurrency 1 as in the fleet drill's containers), waits
until all are registered and settled, then measures the agents' and the server's CPU
(user + system from ``/proc/<pid>/stat``) over two windows of ``--window-s``: idle,
and while the bench publishes ``--rate`` notices per second on
``<p>.control.ready.echo`` with no task behind them (every pull an agent makes for
one finds an empty band: the pure cost of being woken). Figures are cores
(CPU-seconds per second); on a machine shared with other work only the comparison
between the two windows of one run counts.

Usage: ``uv run python -m bench.notice_herd [--agents 50] [--rate 20] [--window-s 20]
[--agent-env AGENTBUS_AGENT_RESCAN_S=5]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentbus.bus import Bus
from agentbus.messages import TasksReady, encode
from agentbus.settings import BusSettings
from bench._procs import Child, children
from bench.common import console
from tests._harness.nats_server import NatsServer

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def total_cpu_s(pids: list[int]) -> float:
    """Summed CPU seconds of ``pids``."""
    return sum(cpu_s(pid) for pid in pids)


async def _registered(bus: Bus, count: int, timeout_s: float) -> None:
    kv = await bus.kv(bus.names.agents_bucket)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            keys = await kv.keys()
        except Exception:  # no keys yet
            keys = []
        if len(keys) >= count:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"fewer than {count} agents registered after {timeout_s} s")


async def _window(
    bus: Bus, pids: list[int], nats_pid: int, window_s: float, rate: float
) -> tuple[float, float, int]:
    """(agent cores, server cores, notices sent) over ``window_s``."""
    notice = encode(TasksReady(capability="echo", band=0))
    subject = bus.names.ready_subject("echo")
    a0, s0, t0 = total_cpu_s(pids), cpu_s(nats_pid), time.monotonic()
    sent = 0
    end = t0 + window_s
    while (now := time.monotonic()) < end:
        if rate > 0:
            due = int((now - t0) * rate) + 1
            while sent < due:
                await bus.nc.publish(subject, notice)
                sent += 1
            await bus.nc.flush()
            await asyncio.sleep(min(1.0 / rate, max(end - time.monotonic(), 0)))
        else:
            await asyncio.sleep(max(end - now, 0))
    elapsed = time.monotonic() - t0
    return (total_cpu_s(pids) - a0) / elapsed, (cpu_s(nats_pid) - s0) / elapsed, sent


async def run(opts: argparse.Namespace) -> None:
    prefix = f"herd{uuid.uuid4().hex[:6]}"
    server = NatsServer().start()
    log_dir = Path(tempfile.mkdtemp(prefix="agentbus-herd-"))
    try:
        settings = BusSettings(nats_url=server.client_url, prefix=prefix)
        bus = await Bus.connect(settings, name="bench-herd")
        await bus.ensure()
        env = {
            "AGENTBUS_NATS_URL": server.client_url,
            "AGENTBUS_PREFIX": prefix,
            "AGENTBUS_LOG_LEVEL": "WARNING",
            "AGENTBUS_AGENT_MAX_CONCURRENCY": "1",
            **dict(kv.split("=", 1) for kv in opts.agent_env),
        }
        with children() as kids:
            for n in range(opts.agents):
                cmd = [sys.executable, "-m", "agentbus.agents.echo"]
                kids.append(
                    Child(f"echo-{n}", cmd, log_dir, {**env, "AGENTBUS_AGENT_ID": f"echo-{n}"})
                )
            await _registered(bus, opts.agents, timeout_s=300)
            await asyncio.sleep(opts.settle_s)
            for kid in kids:
                kid.check()
            pids = [kid.pid for kid in kids]
            assert server.proc is not None
            idle = await _window(bus, pids, server.proc.pid, opts.window_s, 0)
            busy = await _window(bus, pids, server.proc.pid, opts.window_s, opts.rate)
        await bus.close()
    finally:
        server.stop()
    per_notice_ms = (busy[0] - idle[0]) / max(busy[2] / opts.window_s, 1e-9) * 1e3
    console.print(f"{opts.agents} idle agents, {opts.window_s:.0f} s windows (log dir {log_dir})")
    console.print(f"idle:     agents {idle[0]:.3f} cores, nats-server {idle[1]:.3f} cores")
    console.print(
        f"{opts.rate:g} notices/s: agents {busy[0]:.3f} cores, nats-server "
        f"{busy[1]:.3f} cores ({busy[2]} notices)"
    )
    console.print(f"agents' CPU per notice (all agents together): {per_notice_ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0, help="notices per second")
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="agent environment, e.g. AGENTBUS_AGENT_RESCAN_S=60",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
