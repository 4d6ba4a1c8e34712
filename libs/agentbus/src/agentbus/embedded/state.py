"""The embedded stack's state file: who runs a stack, where, and whether it is alive.

``agentbus embedded`` claims the file before it starts anything: it creates it
exclusively (``O_CREAT | O_EXCL``) with its own pid (``owner_pid``) and no URL yet,
then rewrites it (atomic rename) with the URLs and process ids once the stack is
ready, and removes it on stop only if the file is still its own. So of two stacks
started together on one file, exactly one runs; the other refuses
(``StackRunningError``, naming the live one's pid, URL and file) before starting a
process. A file whose owner is dead is stale and is taken over. Another stack beside
the first needs its own file: ``--state-file`` or ``AGENTBUS_STATE_FILE`` (or another
``AGENTBUS_HOME``).

Path: ``$AGENTBUS_STATE_FILE``, else ``$AGENTBUS_HOME/embedded.json`` (default
``~/.agentbus``). Other ``agentbus`` commands read it to find the stack
(``agentbus.cli.connect``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import msgspec

from agentbus.errors import StackRunningError

STATE_FILE_NAME = "embedded.json"
_CLAIM_SETTLE_S = 5.0
"""A file younger than this that does not decode yet is a claim being written."""


class EmbeddedState(msgspec.Struct, kw_only=True):
    """Contents of the state file of an embedded stack (``nats_url`` empty: starting)."""

    nats_url: str = ""
    gateway_url: str = ""
    prefix: str = ""
    pids: dict[str, int] = {}
    """Process id by process name (``nats-server`` and the five services)."""
    runtime: str = "process"
    log_dir: str = ""
    creds_file: str = ""
    """Operator creds of the stack (full access), for other ``agentbus`` commands; empty:
    the stack runs without authentication."""
    owner_pid: int = 0
    """Process id of the ``agentbus embedded`` command that owns the file (0: unknown)."""
    tls_dir: str = ""
    """Directory of the stack's CA and client certificate (``agentbus.auth.tls``
    names), when its nats-server requires TLS; empty: plain TCP."""

    @property
    def alive(self) -> bool:
        """Whether its owner (else its nats-server) still runs."""
        pid = self.owner_pid or self.pids.get("nats-server")
        return pid is not None and pid_alive(pid)


def agentbus_home() -> Path:
    """Directory of per-user agentbus state: ``$AGENTBUS_HOME``, else ``~/.agentbus``."""
    return Path(os.environ.get("AGENTBUS_HOME") or Path.home() / ".agentbus")


def state_file_path() -> Path:
    """Path of the embedded stack's state file (module docstring)."""
    if path := os.environ.get("AGENTBUS_STATE_FILE"):
        return Path(path)
    return agentbus_home() / STATE_FILE_NAME


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load(path: Path) -> EmbeddedState | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=EmbeddedState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def read_state(path: Path | None = None) -> EmbeddedState | None:
    """The running (ready) embedded stack's state, or None.

    None when there is no file, it does not decode, its stack is still starting, or
    its owner is gone (stale).
    """
    state = _load(path or state_file_path())
    if state is None or not state.nats_url or not state.alive:
        return None
    return state


def claim_state(path: Path) -> None:
    """Make ``path`` this process's state file (no URL yet), taking over a stale one.

    Idempotent: a file this process already owns stays as it is.

    Raises:
        StackRunningError: a live stack (or one starting) owns ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = msgspec.json.encode(EmbeddedState(owner_pid=os.getpid()))
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            state = _load(path)
            if state is None and _age_s(path) < _CLAIM_SETTLE_S:
                state = _written(path)  # a claim being written: give its writer a moment
            if state is not None and state.owner_pid == os.getpid():
                return  # ours already
            if state is not None and state.alive:
                raise _running(state, path) from None
            if state is None and _age_s(path) < _CLAIM_SETTLE_S:
                raise _running(None, path) from None  # being written
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: take it over
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(claim)
        return
    raise _running(_load(path), path)


def _running(state: EmbeddedState | None, path: Path) -> StackRunningError:
    if state is None:
        return StackRunningError(str(path))
    return StackRunningError(
        str(path), nats_url=state.nats_url, pid=state.owner_pid or state.pids.get("nats-server")
    )


def store_state(path: Path, state: EmbeddedState) -> None:
    """Replace ``path`` with ``state`` atomically (write, then rename)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n")
    tmp.replace(path)


def release_state(path: Path) -> None:
    """Remove ``path`` if this process owns it (another stack's file stays)."""
    state = _load(path)
    if state is not None and state.owner_pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _written(path: Path, wait_s: float = 1.0) -> EmbeddedState | None:
    """``path``'s state once its writer has written it (None after ``wait_s``).

    A claim is created empty (``O_EXCL``) and written right after: two stacks started
    together see each other's file in between.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if (state := _load(path)) is not None:
            return state
    return None


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
