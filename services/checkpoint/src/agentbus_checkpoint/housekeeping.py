"""History, threads, fork, delete and retention on top of ``CheckpointStore``.

Retention (``Retention``: keep the last N and/or drop versions older than a maximum
age; the latest version is always kept) is applied after every put on the thread,
on demand (``prune``), and by a periodic sweep of every thread (one instance at a
time, under the KV lease ``checkpoint-retention``) so idle threads age out too.
Deleting a version removes, in this order, its id index entry, its keys (one stream
purge of ``<prefix>.v.<n>.>``), its object index key and its Object Store data, and
then moves the head's ``oldest_version`` past it; a crash in between leaves work that
the next round redoes (every step is idempotent), never a version the head claims but
that is half gone; an object whose keys went first is an orphan the orphan sweep
(``agentbus_checkpoint.orphans``) deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import msgspec
import nats.js.errors
from loguru import logger

from agentbus.bus.blobs import get_blob, put_blob
from agentbus.errors import CheckpointCorruptedError, ConflictError, ContractError, NotFoundError
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointOrigin,
    CheckpointsReply,
    CheckpointWrites,
    DeleteThread,
    ForkCheckpoint,
    GetCheckpoint,
    ListCheckpoints,
    ListOwners,
    ListThreads,
    OwnersReply,
    PruneCheckpoints,
    PutCheckpoint,
    Retention,
    ThreadInfo,
    ThreadsReply,
    encode,
    utcnow,
)
from agentbus_checkpoint.head import Head
from agentbus_checkpoint.keys import (
    ThreadKeys,
    head_filters,
    parse_head_key,
    thread_wildcard,
    where,
)
from agentbus_checkpoint.store import CheckpointStore

_decode_writes = msgspec.json.Decoder(CheckpointWrites).decode

_READ_AHEAD = 16
"""Records read concurrently while listing history."""


class Housekeeping:
    """The operations that read or delete many versions at once."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.settings = store.settings

    def default_retention(self) -> Retention | None:
        """The service-wide retention of threads that set none."""
        if self.settings.keep_last is None and self.settings.max_age_s is None:
            return None
        return Retention(keep_last=self.settings.keep_last, max_age_s=self.settings.max_age_s)

    # -- listing -------------------------------------------------------------------
    async def history(self, req: ListCheckpoints) -> CheckpointsReply:
        """A page of history, newest first (see ``ListCheckpoints``).

        Raises:
            NotFoundError: ``req.before`` is not a checkpoint of the thread.
        """
        tk = self.store.keys(req.agent_id, req.thread_id, req.namespace)
        head = await self.store.read_head(tk)
        if req.before is not None:
            top = await self.store.version_of(tk, req.before) - 1
        elif head.value is None:
            return CheckpointsReply(checkpoints=[])
        else:
            top = head.value.version
        low = head.value.oldest_version if head.value else 1
        out: list[Checkpoint] = []
        v = top
        while v >= low and len(out) < req.limit:
            chunk = list(range(v, max(low, v - _READ_AHEAD + 1) - 1, -1))
            records = await asyncio.gather(*(self.store.read_record(tk, n) for n in chunk))
            for record in records:
                if record is not None and _matches(record.metadata, req.metadata):
                    out.append(record)
                    if len(out) == req.limit:
                        break
            v = chunk[-1] - 1
        more = len(out) == req.limit and out[-1].version > low
        return CheckpointsReply(
            checkpoints=out, next_before=out[-1].checkpoint_id if more else None
        )

    async def head_keys(self, agent_id: str | None, thread_id: str | None = None) -> list[str]:
        """Head keys of an agent's threads and namespaces (every agent's when None).

        One stream-info request per filter: the server lists matching subjects.
        """
        bucket = self.store.bus.names.checkpoints_bucket
        filters = (
            head_filters(agent_id, thread_id) if agent_id else ["*.*.latest", "*.*.ns.*.latest"]
        )
        pre = f"$KV.{bucket}."
        keys: set[str] = set()
        for f in filters:
            info = await self.store.bus.js.stream_info(f"KV_{bucket}", subjects_filter=pre + f)
            keys.update(s[len(pre) :] for s in (info.state.subjects or {}))
        return sorted(keys)

    async def threads(self, req: ListThreads) -> ThreadsReply:
        """The agent's threads and namespaces with their heads."""
        if req.thread_id is not None:
            self.store.keys(req.agent_id, req.thread_id)  # validates
        keys = await self.head_keys(req.agent_id, req.thread_id)
        out: list[ThreadInfo] = []
        for key in keys[: req.limit]:
            tk = self.store.keys(*parse_head_key(key))
            head = (await self.store.read_head(tk)).value
            if head is None:
                continue
            out.append(
                ThreadInfo(
                    thread_id=tk.thread_id,
                    namespace=tk.namespace,
                    checkpoint_id=head.checkpoint_id,
                    version=head.version,
                    oldest_version=head.oldest_version,
                    updated_at=head.updated_at,
                    retention=head.retention,
                )
            )
        return ThreadsReply(threads=out, truncated=len(keys) > req.limit)

    async def owners(self, req: ListOwners) -> OwnersReply:
        """The owners with at least one thread (head key), sorted, at most ``req.limit``."""
        owners = sorted({parse_head_key(k)[0] for k in await self.head_keys(None)})
        return OwnersReply(owners=owners[: req.limit], truncated=len(owners) > req.limit)

    # -- fork ----------------------------------------------------------------------
    async def fork(self, req: ForkCheckpoint) -> Checkpoint:
        """Start a new thread from a checkpoint (see ``ForkCheckpoint``).

        Raises:
            NotFoundError: no such source checkpoint.
            ConflictError: the new thread is not empty.
            CheckpointCorruptedError: the source fails its checks.
        """
        source = await self.store.get(
            GetCheckpoint(
                agent_id=req.agent_id,
                thread_id=req.thread_id,
                namespace=req.namespace,
                checkpoint_id=req.checkpoint_id,
            )
        )
        new_agent = req.new_agent_id or req.agent_id
        target = self.store.keys(new_agent, req.new_thread_id, req.new_namespace)
        if (await self.store.read_head(target)).value is not None:
            raise ConflictError(f"cannot fork into {where(target)}: it is not empty")
        ref: BlobRef | None = None
        data = source.data
        if source.data_ref is not None:  # copy: each thread owns its objects
            try:
                data = await get_blob(self.store.bus, source.data_ref)
            except (NotFoundError, ContractError):
                raise self.store.corrupted(f"data of {source.checkpoint_id!r} is bad") from None
            ref = await put_blob(
                self.store.bus,
                target.blob_name(uuid.uuid4().hex),
                data,
                bucket=self.store.bus.names.checkpoint_blobs_bucket,
            )
        put = PutCheckpoint(
            agent_id=new_agent,
            thread_id=req.new_thread_id,
            namespace=req.new_namespace,
            data=b"" if ref else data,
            data_ref=ref,
            metadata=source.metadata | req.metadata,
        )
        origin = CheckpointOrigin(
            agent_id=source.agent_id,
            thread_id=source.thread_id,
            namespace=source.namespace,
            checkpoint_id=source.checkpoint_id,
        )
        try:
            record, _ = await self.store.put(put, forked_from=origin)
        except BaseException as exc:
            if ref is not None:
                await self.store.drop_upload(ref, exc)
            raise
        return record

    # -- delete and retention ------------------------------------------------------
    async def delete_thread(self, req: DeleteThread) -> int:
        """Delete a thread, its namespaces and their data; return versions deleted."""
        self.store.keys(req.agent_id, req.thread_id)  # validates
        bucket = self.store.bus.names.checkpoints_bucket
        refs: list[BlobRef] = []
        count = 0
        for key in await self.head_keys(req.agent_id, req.thread_id):
            tk = self.store.keys(*parse_head_key(key))
            for version in await self.stored_keys(tk, "v.*.rec"):
                record, _ = await self._read_quietly(tk, int(version.split(".")[-2]))
                count += record is not None
                refs += _refs(record, [])
            for writes_key in await self.stored_keys(tk, "w.*"):
                refs += await self.write_refs(writes_key)
        await self.store.bus.js.purge_stream(
            f"KV_{bucket}", subject=self.store.subject(thread_wildcard(req.agent_id, req.thread_id))
        )
        await self.store.delete_blobs(refs)
        self.store.metrics.deleted.labels("delete").inc(count)
        logger.info(
            "checkpoint thread deleted",
            agent_id=req.agent_id,
            thread_id=req.thread_id,
            versions=count,
        )
        return count

    async def stored_keys(self, tk: ThreadKeys, pattern: str) -> list[str]:
        """Keys ``<prefix>.<pattern>`` that exist, whatever the head says."""
        bucket = self.store.bus.names.checkpoints_bucket
        pre = self.store.subject("")
        info = await self.store.bus.js.stream_info(
            f"KV_{bucket}", subjects_filter=self.store.subject(f"{tk.prefix}.{pattern}")
        )
        return sorted(s[len(pre) :] for s in (info.state.subjects or {}))

    async def write_refs(self, key: str) -> list[BlobRef]:
        """Blob refs of the writes stored at ``key`` (none if it does not decode)."""
        entry = await self.store.entry(key)
        try:
            writes = _decode_writes(entry.value or b"") if entry else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            writes = None
        return [w.data_ref for w in writes.writes if w.data_ref] if writes else []

    async def prune(self, req: PruneCheckpoints) -> int:
        """Apply retention now (see ``PruneCheckpoints``); return versions deleted."""
        if req.namespace is not None:
            tks = [self.store.keys(req.agent_id, req.thread_id, req.namespace)]
        else:
            self.store.keys(req.agent_id, req.thread_id)  # validates
            tks = [
                self.store.keys(*parse_head_key(k))
                for k in await self.head_keys(req.agent_id, req.thread_id)
            ]
        return sum([await self.apply_retention(tk, req.retention) for tk in tks])

    async def apply_retention(
        self, tk: ThreadKeys, retention: Retention | None = None, *, head: Head | None = None
    ) -> int:
        """Delete what ``retention`` no longer keeps; return how many versions went.

        ``retention`` None: the thread's own, else the service default; none: no-op.
        """
        head = head or await self.store.read_head(tk)
        if head.value is None:
            return 0
        policy = retention or head.value.retention or self.default_retention()
        if policy is None:
            return 0
        latest, oldest = head.value.version, head.value.oldest_version
        last_dropped = oldest - 1
        if policy.keep_last is not None:
            last_dropped = max(last_dropped, latest - policy.keep_last)
        known: dict[int, Checkpoint | None] = {}
        if policy.max_age_s is not None:
            cutoff = utcnow() - timedelta(seconds=policy.max_age_s)
            while last_dropped + 1 < latest:
                try:
                    record = await self.store.read_record(tk, last_dropped + 1)
                except CheckpointCorruptedError:
                    record = None  # an undecodable old version goes too
                if record is not None and record.created_at >= cutoff:
                    break
                last_dropped += 1
                known[last_dropped] = record
        if last_dropped < oldest:
            return 0
        deleted = 0
        for version in range(oldest, last_dropped + 1):
            deleted += await self.delete_version(tk, version)
        await self._advance_oldest(tk, last_dropped + 1, head)
        self.store.metrics.deleted.labels("retention").inc(deleted)
        logger.debug("checkpoint retention", thread=tk.prefix, deleted=deleted)
        return deleted

    async def delete_version(
        self, tk: ThreadKeys, version: int, checkpoint_id: str | None = None
    ) -> int:
        """Delete version ``version`` (module docstring's order); 1 if a record went, else 0.

        ``checkpoint_id``: delete the version only if it is this checkpoint; otherwise
        only that id's index entry and writes go (a stale index entry).
        """
        record, writes = await self._read_quietly(tk, version)
        bucket = f"KV_{self.store.bus.names.checkpoints_bucket}"
        js = self.store.bus.js
        other = record is not None and checkpoint_id not in (None, record.checkpoint_id)
        if other:  # a stale index entry: the version holds another checkpoint, which stays
            record, writes = None, []
        ids = sorted({i for i in (checkpoint_id, record.checkpoint_id if record else None) if i})
        keys = [key for i in ids for key in (tk.index(i), tk.writes(i))]
        if record is not None and record.data_ref is not None:
            with contextlib.suppress(ContractError):  # not ours: no index key
                keys.append(tk.blob_index(record.data_ref.name))
        if not other:
            keys.append(tk.version_keys(version))
        for key in keys:
            await js.purge_stream(bucket, subject=self.store.subject(key))
        await self.store.delete_blobs(_refs(record, writes))
        return 1 if record is not None else 0

    async def _read_quietly(
        self, tk: ThreadKeys, version: int
    ) -> tuple[Checkpoint | None, list[BlobRef]]:
        """A version's record and the blob refs of its writes, ignoring corruption."""
        try:
            record = await self.store.read_record(tk, version)
        except CheckpointCorruptedError:
            record = None
        if record is None:
            return None, []
        try:
            writes, _ = await self.store.read_writes(tk, record.checkpoint_id)
        except CheckpointCorruptedError:
            return record, []
        return record, [w.data_ref for w in writes.writes if w.data_ref is not None]

    async def _advance_oldest(self, tk: ThreadKeys, oldest: int, head: Head) -> None:
        kv = await self.store.kv()
        for _ in range(self.settings.put_attempts):
            if head.value is None or head.value.oldest_version >= oldest:
                return
            value = encode(msgspec.structs.replace(head.value, oldest_version=oldest))
            try:
                await kv.update(tk.head, value, last=head.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                head = await self.store.read_head(tk)
        logger.warning("could not record pruned versions", thread=tk.prefix, oldest=oldest)

    async def sweep(self) -> int:
        """Apply retention to every thread of every agent; return versions deleted."""
        deleted = 0
        for key in await self.head_keys(None):
            try:
                deleted += await self.apply_retention(self.store.keys(*parse_head_key(key)))
            except Exception as exc:  # one bad thread must not stop the sweep
                logger.warning("retention sweep failed", key=key, error=repr(exc))
        return deleted


def _matches(metadata: dict[str, str], want: dict[str, str]) -> bool:
    return all(metadata.get(k) == v for k, v in want.items())


def _refs(record: Checkpoint | None, write_refs: list[BlobRef]) -> list[BlobRef]:
    refs = list(write_refs)
    if record is not None and record.data_ref is not None:
        refs.append(record.data_ref)
    return refs
