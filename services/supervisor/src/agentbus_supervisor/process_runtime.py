"""Replicas as local processes (asyncio subprocesses), for laptops without Docker.

Each replica runs ``command`` in a new session (its own process group), so ``stop``
signals the whole group: SIGTERM, then SIGKILL after the grace period. stdout and
stderr are read line by line into a bounded buffer (oldest lines kept, new ones
dropped when it is full) that ``logs`` drains. A health check command runs as a
separate subprocess with the replica's environment (killed at its timeout).

``usage`` measures a replica's process and its descendants with ``psutil`` (CPU
between two calls, resident memory: ``usage``).

Limits (``Limits``) are not enforced: that needs cgroups, i.e. root or a container
engine. The supervisor logs a warning when a deployment declares limits here.

A replica identity never runs twice (``_process_state``): each child gets SIGTERM
from the kernel when the supervisor dies (``PR_SET_PDEATHSIG``), and with a
``state_dir`` each replica's pid and start time go to a pid file, so that a
restarted supervisor ends whatever an earlier one left running (``list_own``: the
SIGTERM-grace-SIGKILL of ``stop``) before it starts replicas again. Adopting them is
not possible: their output pipes cannot be reattached. ``close`` stops every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import psutil
from loguru import logger

from agentbus.errors import ContractError, UnavailableError
from agentbus.messages import utcnow
from agentbus_supervisor._process_state import PidFiles, die_with_parent
from agentbus_supervisor.runtime import (
    ExecResult,
    ExitInfo,
    OutputLine,
    ReplicaHandle,
    ReplicaSpec,
    Runtime,
    Usage,
)
from agentbus_supervisor.usage import CpuMark, ProcessTable, cores_between, process_tree

_STRIPPED_ENV = ("SUPERVISOR_", "AGENTBUS_")
"""The supervisor's own settings are not inherited; the spec sets the agent's."""
_EXEC_OUTPUT_CHARS = 400
Stream = Literal["stdout", "stderr"]


@dataclass
class _Child:
    process: asyncio.subprocess.Process
    lines: asyncio.Queue[OutputLine | None]
    env: dict[str, str]
    agent_id: str = ""
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    dropped: int = 0
    cpu_mark: CpuMark | None = None


def exit_info(returncode: int) -> ExitInfo:
    """``ExitInfo`` of a return code (negative = killed by a signal: 128 + n)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return ExitInfo(exit_code=128 - returncode, reason=f"killed by {name}")
    return ExitInfo(exit_code=returncode, reason=f"exit code {returncode}")


class ProcessRuntime(Runtime):
    """Runs replicas as child processes of the supervisor."""

    kind: Literal["docker", "process"] = "process"

    def __init__(
        self,
        *,
        queue_lines: int = 1000,
        line_max_bytes: int = 8192,
        close_grace_s: float = 5.0,
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir``: where pid files go (None: none, no leftovers are ended)."""
        self._children: dict[str, _Child] = {}
        self._processes = ProcessTable()  # one /proc read per sampling round
        self.pid_files = PidFiles(state_dir) if state_dir is not None else None
        self.queue_lines = queue_lines
        self.line_max_bytes = line_max_bytes
        self.close_grace_s = close_grace_s

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Spawn ``spec.command`` with the agent environment.

        Raises:
            ContractError: the spec has no command, or it cannot be executed.
            UnavailableError: the process could not be spawned for another reason.
        """
        if not spec.command:
            raise ContractError(f"deployment {spec.deployment!r} has no command for processes")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env.update(spec.env)
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # prctl only: safe after fork
                limit=self.line_max_bytes,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ContractError(f"cannot execute {spec.command[0]!r}: {exc}") from exc
        except OSError as exc:
            raise UnavailableError(f"cannot spawn {spec.command[0]!r}: {exc}") from exc
        child = _Child(process, asyncio.Queue(maxsize=self.queue_lines), env, spec.agent_id)
        streams = cast(
            list[tuple[Stream, asyncio.StreamReader]],
            [("stdout", process.stdout), ("stderr", process.stderr)],
        )
        child.readers = [asyncio.create_task(self._read(child, n, s)) for n, s in streams]
        asyncio.create_task(self._close_lines(child))  # noqa: RUF006 - ends with the readers
        handle_id = str(process.pid)
        self._children[handle_id] = child
        if self.pid_files is not None:
            self.pid_files.write(spec.agent_id, process.pid)
        return ReplicaHandle(
            runtime_id=handle_id,
            name=spec.agent_id,
            deployment=spec.deployment,
            replica=spec.replica,
            agent_id=spec.agent_id,
            digest=spec.digest,
            running=True,
            started_at=utcnow(),
        )

    async def _read(self, child: _Child, name: Stream, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take a piece of it
                raw = await stream.read(self.line_max_bytes)
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip("\r\n")
            try:
                child.lines.put_nowait(OutputLine(stream=name, at=utcnow(), text=text))
            except asyncio.QueueFull:
                if child.dropped == 0:
                    logger.warning(
                        "replica output dropped: nobody drains it fast enough",
                        agent_id=child.agent_id,
                        queue_lines=self.queue_lines,
                    )
                child.dropped += 1

    async def _close_lines(self, child: _Child) -> None:
        await asyncio.gather(*child.readers, return_exceptions=True)
        # Make room for the end marker: a reader that lags must still see the end.
        while True:
            try:
                child.lines.put_nowait(None)
                return
            except asyncio.QueueFull:
                child.lines.get_nowait()

    def _child(self, handle: ReplicaHandle) -> _Child | None:
        return self._children.get(handle.runtime_id)

    @staticmethod
    def _signal_group(child: _Child, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, sig)

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s`` seconds, forget it."""
        child = self._children.get(handle.runtime_id)
        if child is None:
            return
        if child.process.returncode is None:
            self._signal_group(child, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), grace_s)
            except TimeoutError:
                logger.info("replica ignored SIGTERM; killing", agent_id=handle.agent_id)
        # SIGKILL whatever is left of the group (the leader, or its own children).
        self._signal_group(child, signal.SIGKILL)
        await child.process.wait()
        self._children.pop(handle.runtime_id, None)
        if self.pid_files is not None:
            self.pid_files.remove(child.agent_id, child.process.pid)

    async def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL the process group."""
        if (child := self._child(handle)) is not None:
            self._signal_group(child, signal.SIGKILL)

    async def wait(self, handle: ReplicaHandle) -> ExitInfo:
        """Wait for the process to exit.

        Raises:
            ContractError: the handle is not one of this runtime's children.
        """
        child = self._child(handle)
        if child is None:
            raise ContractError(f"process {handle.runtime_id} is not a child of this runtime")
        returncode = await child.process.wait()
        return exit_info(returncode)

    async def logs(self, handle: ReplicaHandle) -> AsyncIterator[OutputLine]:
        """Output lines until the process has closed stdout and stderr."""
        child = self._child(handle)
        if child is None:
            return
        while (line := await child.lines.get()) is not None:
            yield line

    async def exec(self, handle: ReplicaHandle, command: list[str], timeout_s: float) -> ExecResult:
        """Run ``command`` as a subprocess with the replica's environment.

        Killed (its whole process group) when it outlives ``timeout_s`` seconds.

        Raises:
            UnavailableError: the replica is not a running child of this runtime, or
                the command could not be spawned.
        """
        child = self._child(handle)
        if child is None or child.process.returncode is not None:
            raise UnavailableError(f"replica {handle.agent_id} is not running")
        try:
            probe = await asyncio.create_subprocess_exec(
                *command,
                env=child.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return ExecResult(exit_code=None, output=f"cannot execute {command[0]!r}: {exc}")
        try:
            out, _ = await asyncio.wait_for(probe.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(probe.pid, signal.SIGKILL)
            await probe.wait()
            return ExecResult(exit_code=None, output=f"timed out after {timeout_s:g} s")
        text = out.decode(errors="replace").strip()[-_EXEC_OUTPUT_CHARS:]
        return ExecResult(exit_code=probe.returncode, output=text)

    async def usage(self, handle: ReplicaHandle) -> Usage:
        """The replica's process tree: cores used since the previous call, resident bytes.

        ``cpu_cores`` is None on the first call for a replica.

        Raises:
            UnavailableError: the replica is not a running child, or cannot be read.
        """
        child = self._child(handle)
        if child is None or child.process.returncode is not None:
            raise UnavailableError(f"replica {handle.agent_id} is not running")
        pid = child.process.pid
        try:
            at_s, (cpu_s, rss_bytes) = await asyncio.to_thread(
                lambda: (time.monotonic(), process_tree(pid, self._processes))
            )
        except psutil.Error as exc:
            raise UnavailableError(f"cannot read process {pid}: {exc}") from exc
        mark = CpuMark(monotonic_s=at_s, cpu_s=cpu_s)
        cores, child.cpu_mark = cores_between(child.cpu_mark, mark), mark
        return Usage(cpu_cores=cores, memory_bytes=rss_bytes)

    async def list_own(self) -> list[ReplicaHandle]:
        """End what an earlier supervisor of this node left running; always empty.

        Processes cannot be adopted (their pipes are gone): every replica recorded in
        the pid files is stopped (SIGTERM to its session, SIGKILL after
        ``close_grace_s``) so that it is not run twice once started again.
        """
        if self.pid_files is not None:
            await self.pid_files.end_leftovers(self.close_grace_s)
        return []

    async def close(self) -> None:
        """Stop every child still running (SIGTERM, then SIGKILL after the grace)."""
        children = list(self._children.items())
        await asyncio.gather(
            *(
                self.stop(
                    ReplicaHandle(runtime_id=pid, name=pid, deployment="", replica=0, agent_id=pid),
                    self.close_grace_s,
                )
                for pid, _ in children
            )
        )
        if self.pid_files is not None:
            self.pid_files.discard_dir()
