"""A private Podman API service for tests: ``podman system service`` on a temp socket.

Rootful Podman (Debian's 4.3) with its own storage (``STORE``, kept across sessions so
the agent image is loaded once per image id) and these settings in a private
``containers.conf`` (``CONTAINERS_CONF``), each one needed on this host:

- ``runtime = "runc"``: crun does not work on this cgroup v1 host;
- ``default_ulimits = []``: Podman's rootful defaults raise nofile/nproc above the
  host's hard limits and runc then fails (``error setting rlimit type 7: operation not
  permitted``); empty means inherit the host's limits, as Docker does.

The agent image goes in with ``docker save | podman load`` (the image id is kept).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

STORE = Path(os.environ.get("AGENTBUS_TEST_PODMAN_STORE", "/var/tmp/agentbus-test-podman"))
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""


def podman_available() -> str | None:
    """Why Podman cannot be used here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed: run `bash scripts/setup.sh`"
    if shutil.which("runc") is None:
        return "runc is not installed: run `bash scripts/setup.sh`"
    return None


class PodmanService:
    """``podman system service --time=0 unix://<dir>/podman.sock`` with a private store."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.socket = run_dir / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.conf = run_dir / "containers.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def podman(self, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        """Run a podman CLI command against the private store."""
        cmd = ["podman", "--root", str(STORE / "root"), "--runroot", str(STORE / "runroot"), *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        return subprocess.run(cmd, env=env, capture_output=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]

    def start(self, timeout_s: float = 30.0) -> PodmanService:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONTAINERS_CONF)
        cmd = [
            "podman",
            "--root",
            str(STORE / "root"),
            "--runroot",
            str(STORE / "runroot"),
            "system",
            "service",
            "--time=0",
            self.url,
        ]
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        log = (self.run_dir / "service.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    "podman system service did not start: "
                    + (self.run_dir / "service.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        while not self._pings():  # the first request initialises the engine: wait for it
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("podman system service does not answer /_ping")
            time.sleep(0.2)
        return self

    def _pings(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
                return b" 200" in sock.recv(4096).split(b"\r\n", 1)[0]
            except OSError:
                return False

    def load_image(self, image: str) -> None:
        """Copy ``image`` from Docker into Podman's store unless the same id is there."""
        want = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        have = self.podman("image", "inspect", "--format", "{{.Id}}", image)
        if have.returncode == 0 and have.stdout.decode().strip() in (want, want[7:]):
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = self.podman("load", stdin=save.stdout)
        save.wait()
        if loaded.returncode != 0:
            raise RuntimeError(f"podman load of {image} failed: {loaded.stderr.decode()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> PodmanService:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
