"""A LangGraph checkpointer on the agentbus checkpoint service (``agentbus-runtime[langgraph]``).

``AgentbusSaver(bus)`` is an async ``BaseCheckpointSaver``: compile a graph with
``checkpointer=saver`` and run it with ``ainvoke``/``astream``; another process (or
machine) with a saver on the same bus resumes the thread where it stopped::

    saver = AgentbusSaver(bus, agent_id="support-bot")
    graph = builder.compile(checkpointer=saver)
    await graph.ainvoke(inputs, {"configurable": {"thread_id": "ticket-42"}})

Mapping: checkpoints of all LangGraph threads go to the checkpoint-service owner
``agent_id``; a LangGraph thread is a service thread, its ``checkpoint_ns`` a
namespace of it, LangGraph's checkpoint id the service's (``put`` with ``branch``:
LangGraph may resume from, and branch off, any earlier checkpoint). The checkpoint
and its metadata are stored with LangGraph's serializer (``serde``, msgpack + typed
values); each top-level metadata item is also stored as compact JSON in the service
metadata, which is what ``alist(filter=...)`` matches (equality, as LangGraph's own
savers do). ``aput_writes`` maps to the service's pending writes (same ``idx`` rules:
``WRITES_IDX_MAP`` for special channels). ``adelete_for_runs`` finds the checkpoints
whose metadata ``run_id`` matches and deletes them by id (``DeleteCheckpoints``).
Synchronous methods work from other threads than the event loop the saver was
created on (as LangGraph's async Postgres saver does) and raise there.

Large values are transparent (Object Store), and every read is checked against its
SHA-256 (``CheckpointCorruptedError`` instead of data).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.base import Checkpoint as LgCheckpoint
from langgraph.checkpoint.serde.base import SerializerProtocol

from agentbus.bus import Bus
from agentbus.errors import NotFoundError
from agentbus.messages import Checkpoint, PendingWrite, Retention
from agentbus.state.checkpoints import CheckpointClient

T = TypeVar("T")
__all__ = ["AgentbusSaver"]


class _Typed(msgspec.Struct, array_like=True, frozen=True):
    """A value as LangGraph's serializer typed it: ``(type tag, bytes)``."""

    type: str
    data: bytes


class _Stored(msgspec.Struct, array_like=True, frozen=True):
    """The service checkpoint data of one LangGraph checkpoint (msgpack)."""

    checkpoint: _Typed
    metadata: _Typed


_encode = msgspec.msgpack.encode
_decode_stored = msgspec.msgpack.Decoder(_Stored).decode
_decode_typed = msgspec.msgpack.Decoder(_Typed).decode


def _flat(value: Any) -> str:
    """A metadata value as the compact, key-sorted JSON that filters compare."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _where(config: RunnableConfig) -> tuple[str, str]:
    conf = config.get("configurable", {})
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns", ""))


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


class AgentbusSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in the agentbus checkpoint service (see the module docstring).

    Args:
        bus: the connection (its event loop is the saver's).
        agent_id: service owner of the checkpoints (one per application or graph).
        serde: LangGraph serializer (default: LangGraph's ``JsonPlusSerializer``).
        retention: retention set on every thread written (None: the service default).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str = "langgraph",
        serde: SerializerProtocol | None = None,
        retention: Retention | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.client = CheckpointClient(bus, agent_id)
        self.retention = retention
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    # -- encoding ------------------------------------------------------------------
    def _typed(self, value: Any) -> _Typed:
        return _Typed(*self.serde.dumps_typed(value))

    def _untyped(self, typed: _Typed) -> Any:
        return self.serde.loads_typed((typed.type, typed.data))

    def _tuple(self, ckpt: Checkpoint) -> CheckpointTuple:
        stored = _decode_stored(ckpt.data)
        ns = ckpt.namespace
        return CheckpointTuple(
            config=_config(ckpt.thread_id, ns, ckpt.checkpoint_id),
            checkpoint=self._untyped(stored.checkpoint),
            metadata=self._untyped(stored.metadata),
            parent_config=(_config(ckpt.thread_id, ns, ckpt.parent_id) if ckpt.parent_id else None),
            pending_writes=[
                (w.task_id, w.channel, self._untyped(_decode_typed(w.data))) for w in ckpt.writes
            ],
        )

    # -- async API -----------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its id, else the thread's latest), or None."""
        thread_id, ns = _where(config)
        try:
            ckpt = await self.client.get(thread_id, get_checkpoint_id(config), namespace=ns)
        except NotFoundError:
            return None
        return self._tuple(ckpt)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Matching checkpoints, newest first per thread and namespace.

        ``config`` None lists every thread; a config without ``checkpoint_ns`` every
        namespace of its thread. ``filter`` items must equal the metadata's; ``before``
        keeps ids below its checkpoint id (LangGraph ids sort by time); at most
        ``limit`` (None: all).
        """
        wanted = {k: _flat(v) for k, v in (filter or {}).items()}
        before_id = get_checkpoint_id(before) if before else None
        only_id: str | None = None
        if config is None:
            places = [(t.thread_id, t.namespace) for t in await self.client.threads()]
        else:
            thread_id = str(config["configurable"]["thread_id"])
            only_id = get_checkpoint_id(config)
            ns = config["configurable"].get("checkpoint_ns")
            if ns is None:
                places = [(t.thread_id, t.namespace) for t in await self.client.threads(thread_id)]
            else:
                places = [(thread_id, str(ns))]
        left = limit
        for thread_id, ns in places:
            async for summary in self.client.history(thread_id, namespace=ns, metadata=wanted):
                if left is not None and left <= 0:
                    return
                cid = summary.checkpoint_id
                if (only_id and cid != only_id) or (before_id and cid >= before_id):
                    continue
                try:
                    ckpt = await self.client.get(thread_id, cid, namespace=ns)
                except NotFoundError:  # pruned meanwhile
                    continue
                if left is not None:
                    left -= 1
                yield self._tuple(ckpt)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: LgCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` as a child of ``config``'s checkpoint; its config."""
        thread_id, ns = _where(config)
        full_metadata = get_checkpoint_metadata(config, metadata)
        stored = _Stored(checkpoint=self._typed(checkpoint), metadata=self._typed(full_metadata))
        await self.client.put(
            thread_id,
            _encode(stored),
            parent_id=get_checkpoint_id(config),
            namespace=ns,
            checkpoint_id=checkpoint["id"],
            branch=True,
            metadata={k: _flat(v) for k, v in full_metadata.items()},
            retention=self.retention,
        )
        return _config(thread_id, ns, checkpoint["id"])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Attach a task's writes to ``config``'s checkpoint."""
        thread_id, ns = _where(config)
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        pending = [
            PendingWrite(
                task_id=task_id,
                channel=channel,
                idx=WRITES_IDX_MAP.get(channel, idx),
                data=_encode(self._typed(value)),
                task_path=task_path,
            )
            for idx, (channel, value) in enumerate(writes)
        ]
        await self.client.put_writes(thread_id, checkpoint_id, pending, namespace=ns)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread with its namespaces, checkpoints and writes."""
        await self.client.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (with their writes) whose metadata ``run_id`` is listed.

        Every thread and namespace of ``agent_id``: one history listing each, then one
        delete request per namespace with matches. Where a thread's latest checkpoint
        goes, the newest one left becomes its latest (or the thread is empty). Unknown
        run ids are a no-op.
        """
        wanted = {_flat(str(run_id)) for run_id in run_ids}
        if not wanted:
            return
        for info in await self.client.threads():
            thread_id, ns = info.thread_id, info.namespace
            doomed = [
                c.checkpoint_id
                async for c in self.client.history(thread_id, namespace=ns)
                if c.metadata.get("run_id") in wanted
            ]
            if doomed:
                await self.client.delete_checkpoints(thread_id, doomed, namespace=ns)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (same ids and parents) and write to another thread."""
        for info in await self.client.threads(source_thread_id):
            ns = info.namespace
            chain = [c async for c in self.client.history(source_thread_id, namespace=ns)]
            copied: set[str] = set()
            for summary in reversed(chain):  # oldest first: parents before children
                ckpt = await self.client.get(source_thread_id, summary.checkpoint_id, namespace=ns)
                parent = ckpt.parent_id if ckpt.parent_id in copied else None
                await self.client.put(
                    target_thread_id,
                    ckpt.data,
                    parent_id=parent,
                    namespace=ns,
                    checkpoint_id=ckpt.checkpoint_id,
                    branch=True,
                    metadata=ckpt.metadata,
                    retention=self.retention,
                )
                copied.add(ckpt.checkpoint_id)
                if ckpt.writes:
                    writes = [
                        msgspec.structs.replace(w, data_ref=None, sha256="") for w in ckpt.writes
                    ]
                    await self.client.put_writes(
                        target_thread_id, ckpt.checkpoint_id, writes, namespace=ns
                    )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's latest checkpoint; ``delete``: all go.

        Raises:
            ValueError: an unknown strategy.
        """
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: keep_latest or delete")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.client.delete_thread(thread_id)
            else:
                await self.client.prune(thread_id, retention=Retention(keep_last=1))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<counter:032>.<random>``: increasing, and unique across concurrent writers."""
        if current is None:
            counter = 0
        elif isinstance(current, int):
            counter = current
        else:
            counter = int(str(current).split(".")[0])
        return f"{counter + 1:032}.{random.random():016}"

    # -- sync API (from other threads) -----------------------------------------------
    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            coro.close()
            raise RuntimeError(
                "AgentbusSaver is asynchronous: use ainvoke/astream (sync calls work only "
                "from another thread than the saver's event loop)"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Sync ``aget_tuple``."""
        return self._sync(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Sync ``alist``."""

        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        return iter(self._sync(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: LgCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Sync ``aput``."""
        return self._sync(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Sync ``aput_writes``."""
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Sync ``adelete_thread``."""
        self._sync(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Sync ``adelete_for_runs``."""
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Sync ``acopy_thread``."""
        self._sync(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Sync ``aprune``."""
        self._sync(self.aprune(thread_ids, strategy=strategy))
