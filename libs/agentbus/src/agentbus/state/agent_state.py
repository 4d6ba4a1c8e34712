"""Durable agent state on the checkpoint service: per task and per agent.

Thread model (``agentbus.state.checkpoints``: owner + thread):

* **Task progress** lives on owner ``<capability>``, thread ``task-<task_id>``. Any
  agent serving the capability can take over a redelivered task (after a crash, a
  lapsed lease, a retry), so the state belongs to the task and its capability, not
  to the agent instance that happened to run it. ``ctx.checkpoint`` is this thread:
  ``await ctx.checkpoint.load(T)`` returns the latest saved state (None at first),
  ``await ctx.checkpoint.save(state)`` saves one version now, ``ctx.checkpoint.update
  (state)`` only remembers it for the runtime to save: every
  ``AgentSettings.checkpoint_interval_s`` while the handler runs, when the handler
  fails (raises, times out) and when it is cancelled or stopped. Once the handler
  succeeds the thread is deleted (its work is in the result). Versions are kept per
  ``task_retention`` (the last 3, at most 7 days) as a safety net.
* **Agent state** lives on owner ``<agent_id>``, thread ``agent``: ``agent.state``,
  restored when the agent starts (before it takes tasks), saved by
  ``await agent.save_state()``, every ``checkpoint_interval_s`` if it changed, and
  when the agent stops. Supervisors give replicas stable ids (``<deployment>-<n>``),
  so a restarted replica finds its state; a hand-started agent needs
  ``AGENTBUS_AGENT_ID`` for that.

States are encoded as JSON with msgspec (so ``nats kv get`` shows them) and decoded
as the type given to ``load`` / ``Agent(state_type=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload

import msgspec
from loguru import logger
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agentbus.bus import Bus
from agentbus.errors import ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import Checkpoint, Retention
from agentbus.state.checkpoints import CheckpointClient

T = TypeVar("T")
AGENT_THREAD = "agent"
RESTORE_TIMEOUT_S = 60.0
"""How long an agent retries loading its state while the checkpoint service is away."""
FLUSH_TIMEOUT_S = 5.0
"""Longest wait for the checkpoint saved when a handler fails or is cancelled."""
task_retention = Retention(keep_last=3, max_age_s=7 * 24 * 3600.0)
"""Retention of task-progress threads (deleted anyway when the task succeeds)."""
agent_retention = Retention(keep_last=10)
"""Retention of agent-state threads."""


def task_thread(task_id: str) -> str:
    """Thread id of a task's progress."""
    return f"task-{task_id}"


class StateThread:
    """One thread of JSON-encoded state: load, save, and a pending value to save later.

    Args:
        client: the owner's ``CheckpointClient``.
        thread_id: the thread.
        retention: retention set on the thread with every save.
    """

    def __init__(
        self, client: CheckpointClient, thread_id: str, *, retention: Retention | None = None
    ) -> None:
        self.client = client
        self.thread_id = thread_id
        self.retention = retention
        self.head_id: str | None = None
        """Latest checkpoint id known (the parent of the next save)."""
        self.saves = 0
        """Versions saved through this object."""
        self._head_known = False
        self._pending: bytes | None = None
        self._last: bytes | None = None
        self._pending_meta: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @overload
    async def load(self) -> Any: ...
    @overload
    async def load(self, type_: type[T]) -> T | None: ...
    async def load(self, type_: Any = Any) -> Any:
        """The latest saved state decoded as ``type_``, or None if nothing was saved.

        Raises:
            CheckpointCorruptedError: the stored state fails its digest.
            ContractError: it does not decode as ``type_``.
        """
        ckpt = await self.client.latest(self.thread_id)
        self.head_id = ckpt.checkpoint_id if ckpt else None
        self._head_known = True
        if ckpt is None:
            return None
        try:
            return msgspec.json.decode(ckpt.data, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError(
                f"state of thread {self.thread_id!r} does not decode: {exc}"
            ) from exc

    def update(self, state: Any, *, metadata: dict[str, str] | None = None) -> None:
        """Remember ``state`` as the one to save at the next interval, failure or stop.

        Raises:
            TypeError: msgspec cannot encode ``state``.
        """
        self._pending = self._last = msgspec.json.encode(state)
        self._pending_meta = metadata or {}

    async def save(self, state: Any, *, metadata: dict[str, str] | None = None) -> Checkpoint:
        """Save ``state`` as the thread's next version now; return the version (no data).

        Raises:
            CheckpointConflictError: another writer saved to the thread since this one
                loaded or saved (e.g. a newer attempt of the same task took over).
            TypeError: msgspec cannot encode ``state``.
        """
        return await self._save(msgspec.json.encode(state), metadata or {})

    async def flush(self, *, reason: str = "interval", force: bool = False) -> Checkpoint | None:
        """Save the state last given to ``update``, with ``reason`` in the metadata.

        Only if it was not saved yet, unless ``force`` (the runtime forces the save
        that marks a failure or a stop, so the latest version says why it is the last).
        """
        data = self._last if force else self._pending
        if data is None:
            return None
        return await self._save(data, {**self._pending_meta, "reason": reason})

    async def _save(self, data: bytes, metadata: dict[str, str]) -> Checkpoint:
        async with self._lock:
            if not self._head_known:
                page = await self.client.list(self.thread_id, limit=1)
                self.head_id = page.checkpoints[0].checkpoint_id if page.checkpoints else None
                self._head_known = True
            ckpt = await self.client.put(
                self.thread_id,
                data,
                parent_id=self.head_id,
                metadata=metadata,
                retention=self.retention,
            )
            self.head_id = ckpt.checkpoint_id
            self.saves += 1
            if self._pending == data:
                self._pending = None
            return ckpt

    async def delete(self) -> int:
        """Delete the thread; return how many versions it had."""
        self._pending = self._last = None
        self.head_id, self._head_known = None, True
        return await self.client.delete_thread(self.thread_id)


def task_state(bus: Bus, capability: str, task_id: str) -> StateThread:
    """The progress thread of a task (see the module docstring)."""
    return StateThread(
        CheckpointClient(bus, capability), task_thread(task_id), retention=task_retention
    )


@asynccontextmanager
async def checkpointing(state: StateThread, interval_s: float | None) -> AsyncIterator[None]:
    """Run a handler with its task checkpoints (see the module docstring).

    Saves the pending state every ``interval_s`` (None: never), when the block raises
    or is cancelled (reason ``failure`` / ``cancelled``), and deletes the thread when
    the block succeeded after saving anything.
    """
    done = asyncio.Event()
    periodic = asyncio.create_task(_every(state, interval_s, done)) if interval_s else None
    try:
        yield
    except BaseException as exc:
        done.set()
        if periodic is not None:
            await asyncio.gather(periodic, return_exceptions=True)
        reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failure"
        await _flush_quietly(state, reason, force=True)
        raise
    done.set()
    if periodic is not None:
        await asyncio.gather(periodic, return_exceptions=True)
    if state.saves or state.head_id:
        try:
            await state.delete()
        except Exception as exc:  # retention and the sweep remove it later
            logger.warning("could not delete task checkpoints", error=repr(exc))


async def _every(state: StateThread, interval_s: float, done: asyncio.Event) -> None:
    # Ends on ``done``, not by cancellation (nats-py may swallow a cancel in a request).
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval_s)
        if not done.is_set():
            await _flush_quietly(state, "interval")


async def _flush_quietly(state: StateThread, reason: str, *, force: bool = False) -> None:
    try:
        async with asyncio.timeout(FLUSH_TIMEOUT_S):
            if await state.flush(reason=reason, force=force) is not None:
                logger.info("task checkpoint saved", reason=reason, thread=state.thread_id)
    except Exception as exc:
        logger.warning("task checkpoint failed", reason=reason, error=repr(exc))


class AgentState:
    """``agent.state``: the agent's own durable state (see the module docstring).

    Args:
        agent_id: owner of the ``agent`` thread.
        state_type: type the stored state decodes as (``Any``: plain JSON); None: the
            agent keeps no durable state (no restore at start, no saves).
    """

    def __init__(self, agent_id: str, state_type: Any = None) -> None:
        self.agent_id = agent_id
        self.state_type = state_type
        self.enabled = state_type is not None
        self.value: Any = None
        """The state; restored on start, saved by ``save`` and periodically."""
        self.restored = asyncio.Event()
        """Set once the state was restored (or found empty) at start."""
        self.restore_s: float | None = None
        """Seconds the restore took (agent start to state loaded)."""
        self._thread: StateThread | None = None
        self._saved: bytes | None = None

    async def restore(self, bus: Bus, *, started: float | None = None) -> Any:
        """Load the latest state into ``value`` and return it (None if none was saved).

        ``started`` (a ``time.perf_counter()`` reading) is when the agent started; the
        restore time ``restore_s`` counts from it.
        """
        started = time.perf_counter() if started is None else started
        self._thread = StateThread(
            CheckpointClient(bus, self.agent_id), AGENT_THREAD, retention=agent_retention
        )
        thread = self._thread
        async for attempt in AsyncRetrying(  # the checkpoint service may start after us
            retry=retry_if_exception_type((UnavailableError, RequestTimeoutError)),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            stop=stop_after_delay(RESTORE_TIMEOUT_S),
            reraise=True,
        ):
            with attempt:
                value = await thread.load(self.state_type or Any)
        if value is not None:
            self.value = value
            self._saved = msgspec.json.encode(value)
        self.restore_s = time.perf_counter() - started
        self.restored.set()
        logger.info("agent state restored", found=value is not None, restore_s=self.restore_s)
        return value

    async def save(self, *, force: bool = False) -> Checkpoint | None:
        """Save ``value`` if it changed since the last save (or ``force``).

        Raises:
            ContractError: called before ``restore``.
            CheckpointConflictError: another process saved this agent's state.
        """
        if self._thread is None:
            raise ContractError("agent state is saved only after the agent started")
        data = msgspec.json.encode(self.value)
        if data == self._saved and not force:
            return None
        ckpt = await self._thread.save(msgspec.Raw(data))
        self._saved = data
        return ckpt

    async def run_periodic(self, interval_s: float, stop: asyncio.Event) -> None:
        """Save every ``interval_s`` if changed, until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                await self.save_quietly()

    async def save_quietly(self) -> None:
        """``save``, logging instead of raising (periodic saves, the save at stop)."""
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                await self.save()
        except Exception as exc:
            logger.warning("agent state save failed", error=repr(exc))
