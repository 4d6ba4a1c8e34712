"""A real PostgreSQL (Debian's ``postgresql`` package) for the tests.

PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` user (``runuser -u postgres --``) on a temporary data directory it owns;
as another user, as that user. The server listens on 127.0.0.1 and a free port,
trusts local connections, and is stopped by its PID (``postmaster.pid``) at the end.
``stop_immediately``/``start`` simulate an outage (``pg_ctl stop -m immediate``).
Each test takes a database of its own (``create_database``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

PG_USER = "postgres"


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``.

    Raises:
        RuntimeError: PostgreSQL is not installed (``bash scripts/setup.sh`` installs it).
    """
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: run `bash scripts/setup.sh` "
            "(or `apt-get install -y postgresql`)"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (context manager).

    Args:
        fsync: keep PostgreSQL's default ``fsync=on`` (benchmarks); the tests turn it
            off, as they measure nothing and share the disk.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.bindir = postgres_bindir()
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="agentbus-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.port = _free_port()
        self.user = PG_USER if self.as_root else os.environ.get("USER", PG_USER)

    # -- commands --------------------------------------------------------------------
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------
    def init(self) -> None:
        if self.as_root:
            shutil.chown(self.root, PG_USER, PG_USER)
        os.chmod(self.root, 0o755)  # postgres traverses it; the data dir itself is 0700
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start (or restart after ``stop_immediately``) and wait until it accepts."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        if not self.fsync:
            options += " -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data_dir),
                  "-l", str(self.log_file), "-o", options)  # fmt: skip

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: connections are cut, nothing shuts down cleanly."""
        self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data_dir))

    @property
    def pid(self) -> int | None:
        """PID of the postmaster (first line of ``postmaster.pid``), None if not running."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop by PID: SIGINT (fast shutdown), SIGKILL if still there after ``timeout_s``."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` (tuples only, unaligned); its output."""
        proc = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", sql],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr}")
        return proc.stdout

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"audit_{uuid.uuid4().hex[:10]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)
