"""Keeping process replicas from outliving their supervisor (Linux ``/proc``, ``prctl``).

Two layers, so that a replica identity never runs twice:

1. ``die_with_parent``: the child asks the kernel for SIGTERM when its parent dies
   (``PR_SET_PDEATHSIG``). The signal fires when the *thread* that forked the child
   ends; asyncio forks from the event-loop thread, which lives as long as the
   supervisor. It does not reach grandchildren (a shell wrapper's agent) and is
   cleared by a set-uid exec.
2. ``PidFiles``: one JSON file per replica in the state directory, with the pid and
   its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot). A
   restarted supervisor ends every process of a recorded session (the replica runs in
   its own session, so session id = its pid) that started no earlier than the
   recorded leader: SIGTERM, then SIGKILL after the grace. The start time guards
   against a reused pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loguru import logger

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the supervisor dies.

    If the supervisor died between fork and ``prctl`` (the child was reparented), the
    child kills itself at once.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return _preexec


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in clock ticks) of a live process, None if gone/zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[3]), int(fields[19])  # field 6 = session, field 22 = starttime


def start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if it is gone."""
    stat = _stat(pid)
    return stat[1] if stat else None


def session_members(session: int, started_at_ticks: int) -> list[int]:
    """Live pids in session ``session`` that started at or after ``started_at_ticks``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            if stat[0] == session and stat[1] >= started_at_ticks:
                members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class PidRecord:
    """One replica process as written to its pid file."""

    agent_id: str
    pid: int
    start_ticks: int


class PidFiles:
    """Pid files of this node's process replicas, in ``state_dir`` (created 0700)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def discard_dir(self) -> None:
        """Remove the state directory if no pid file is left in it."""
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()

    def _path(self, agent_id: str) -> Path:
        return self.state_dir / f"{agent_id}.pid.json"

    def write(self, agent_id: str, pid: int) -> None:
        """Record replica ``agent_id`` as process ``pid`` (replacing an older record)."""
        ticks = start_time(pid)
        if ticks is None:
            return  # already gone: nothing to end later
        tmp = self._path(agent_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(PidRecord(agent_id, pid, ticks))))
        tmp.replace(self._path(agent_id))

    def remove(self, agent_id: str, pid: int) -> None:
        """Forget ``agent_id`` if its record still names ``pid``."""
        path = self._path(agent_id)
        with contextlib.suppress(OSError, ValueError, TypeError):
            if json.loads(path.read_text())["pid"] == pid:
                path.unlink()

    def records(self) -> list[PidRecord]:
        """Every readable record; unreadable files are logged and removed."""
        found = []
        for path in sorted(self.state_dir.glob("*.pid.json")):
            try:
                found.append(PidRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("bad pid file; removed", path=str(path), error=repr(exc))
                path.unlink(missing_ok=True)
        return found

    async def end_leftovers(self, grace_s: float) -> list[str]:
        """End the processes of every recorded replica; return the agent ids ended.

        SIGTERM to each recorded session's members, SIGKILL to those left after
        ``grace_s`` seconds; every record is removed.
        """
        targets: dict[str, list[int]] = {}
        for record in self.records():
            members = session_members(record.pid, record.start_ticks)
            if members:
                targets[record.agent_id] = members
            self._path(record.agent_id).unlink(missing_ok=True)
        if not targets:
            return []
        logger.warning("ending replicas an earlier supervisor left running", agents=sorted(targets))
        pids = [pid for members in targets.values() for pid in members]
        _signal_all(pids, signal.SIGTERM)
        for _ in range(max(1, round(grace_s / _POLL_S))):  # not our children: poll
            if not any(_alive(p) for p in pids):
                break
            await asyncio.sleep(_POLL_S)
        _signal_all([p for p in pids if _alive(p)], signal.SIGKILL)
        return sorted(targets)


def _alive(pid: int) -> bool:
    return _stat(pid) is not None


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
