"""Child processes of a benchmark: started with a log file, stopped by PID, always."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.common import console

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One child process whose stdout and stderr go to ``log``."""

    def __init__(self, name: str, cmd: Sequence[str], log_dir: Path, env: dict[str, str]):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if (code := self.proc.poll()) is not None:
            raise RuntimeError(f"{self.name} exited with {code}; log tail:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL this PID and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, chars: int = 3000) -> str:
        """The end of the log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; only this PID."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{self.name} ignored SIGTERM; killing pid {self.pid}")
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to append started children to; every one is stopped on exit."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (Linux ``/proc``; 0 if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until 127.0.0.1:``port`` accepts connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def tool_version(cmd: Sequence[str]) -> str:
    """First line of ``cmd``'s output (e.g. ``nats-server --version``), or ``missing``."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
