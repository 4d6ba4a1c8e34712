"""Checkpoint storage: put and get versions (layout in ``agentbus_checkpoint.keys``).

Rules:

* ``put`` appends version ``n + 1`` to a thread whose head is at ``n`` (or whose
  latest versions up to ``n`` were deleted: numbers are not reused). ``parent_id``
  must name the head's checkpoint (None for an empty thread; a writer must say which
  state it built on) unless ``branch`` is set. The version is committed by one
  create-only message, its record with the data inline, then its index and the head
  follow (``agentbus_checkpoint.commit``): of two concurrent puts on one head exactly
  one wins; the other gets ``CheckpointConflictError`` naming its parent and the
  winner (a branch put takes the next number instead).
* SHA-256 of the data is computed here and checked on every ``get``; a record that
  does not decode, names another checkpoint, or whose data fails its digest raises
  ``CheckpointCorruptedError``, never returns data.
* Data over ``inline_max_bytes`` goes to the Object Store ``<p>_checkpoint_blobs``.
  A client whose data is too large for one request uploads it first as
  ``<thread prefix>/<32 hex>`` and sends ``data_ref``; the service checks that the
  object is the thread's, that its size and recorded SHA-256 match, that no version
  references it yet, and that it is younger than half ``orphan_grace_s`` (older
  uploads may be swept as orphans, see ``agentbus_checkpoint.orphans``). The put
  also writes ``<prefix>.b.<32 hex>`` (the object's index key) after the record.
  ``get`` then returns ``data_ref`` (empty ``data``) and the reader fetches and
  checks the bytes.
* When a put is refused for sure (``refused``), data the service uploaded for it is
  deleted at once; after a timeout or a lost connection the put may have been stored,
  so the object is left to the orphan sweep, which deletes it only if unreferenced.

Pending writes are stored by ``agentbus_checkpoint.writes``; ``get`` returns them with
their checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Sequence

import msgspec
import nats.js.errors
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.bus.blobs import put_blob
from agentbus.bus.objects import delete_object
from agentbus.errors import (
    CheckpointConflictError,
    CheckpointCorruptedError,
    ConflictError,
    ContractError,
    NotFoundError,
    UnavailableError,
)
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointHead,
    CheckpointIndex,
    CheckpointOrigin,
    CheckpointWrites,
    GetCheckpoint,
    PendingWrite,
    PutCheckpoint,
    encode,
    utcnow,
)
from agentbus_checkpoint.commit import NotStoredError, advance_head, create_version, roll_forward
from agentbus_checkpoint.head import Head, HeadCache
from agentbus_checkpoint.keys import BlobName, ThreadKeys, where
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.objects import object_meta
from agentbus_checkpoint.settings import CheckpointSettings

_decode_head = msgspec.json.Decoder(CheckpointHead).decode
_decode_record = msgspec.json.Decoder(Checkpoint).decode
_decode_index = msgspec.json.Decoder(CheckpointIndex).decode
_decode_writes = msgspec.json.Decoder(CheckpointWrites).decode


def new_checkpoint_id(version: int) -> str:
    """``<version:012d>-<8 hex>``: unique, and sorts in version order."""
    return f"{version:012d}-{uuid.uuid4().hex[:8]}"


def object_digest(sha256_hex: str) -> str:
    """The Object Store's form of a SHA-256 (``SHA-256=<base64url>``, as nats clients write)."""
    return "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).decode()


def refused(exc: BaseException) -> bool:
    """Whether a failed write is certainly not stored (uploads made for it may go now).

    Errors we raise before writing, a lost head race and a server refusal are
    certain; timeouts, cancellation and connection errors are not (the write may
    have been stored), so their uploads are left to the orphan sweep.
    """
    return isinstance(
        exc, (ConflictError, ContractError, NotFoundError, CheckpointCorruptedError, NotStoredError)
    )


async def _none() -> None:
    return None


async def _known(head: Head) -> Head:
    return head


def write_order(w: PendingWrite) -> tuple[str, str, int]:
    """LangGraph's ``writes_sort_key``: ``(task_path, task_id, idx)``."""
    return (w.task_path, w.task_id, w.idx)


class CheckpointStore:
    """Put and get checkpoints; read the stored values (see the module docstring)."""

    def __init__(self, bus: Bus, settings: CheckpointSettings, metrics: CheckpointMetrics):
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self.heads = HeadCache()

    # -- helpers -------------------------------------------------------------------
    def keys(self, agent_id: str, thread_id: str, namespace: str = "") -> ThreadKeys:
        """Keys of a thread (validates the ids)."""
        return ThreadKeys.of(agent_id, thread_id, namespace, max_chars=self.settings.max_id_chars)

    async def kv(self) -> KeyValue:
        """The checkpoints bucket."""
        return await self.bus.kv(self.bus.names.checkpoints_bucket)

    def subject(self, key: str) -> str:
        """Stream subject of a key of the checkpoints bucket."""
        return f"$KV.{self.bus.names.checkpoints_bucket}.{key}"

    async def entry(self, key: str) -> KeyValue.Entry | None:
        """The key's current entry, None if it does not exist or was deleted."""
        try:
            return await (await self.kv()).get(key)
        except nats.js.errors.KeyNotFoundError:
            return None

    def corrupted(self, detail: str) -> CheckpointCorruptedError:
        """Count, log and build the error for a corrupted stored value."""
        self.metrics.corrupted.inc()
        logger.error("checkpoint corrupted", detail=detail)
        return CheckpointCorruptedError(detail)

    async def read_head(self, tk: ThreadKeys) -> Head:
        """The thread's head and its revision.

        Raises:
            CheckpointCorruptedError: the head does not decode.
        """
        kv = await self.kv()
        try:
            entry = await kv.get(tk.head)
        except nats.js.errors.KeyNotFoundError as exc:
            marker = getattr(exc, "entry", None)  # a delete marker still has a revision
            head = Head(None, marker.revision if marker is not None else 0)
        else:
            try:
                head = Head(_decode_head(entry.value or b""), entry.revision or 0)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise self.corrupted(f"head {tk.head!r} does not decode: {exc}") from None
        self.heads.put(tk.head, head)
        return head

    async def version_of(self, tk: ThreadKeys, checkpoint_id: str) -> int:
        """The version number of ``checkpoint_id`` in the thread.

        Raises:
            NotFoundError: no such checkpoint in the thread.
            CheckpointCorruptedError: the index entry does not decode.
        """
        if not checkpoint_id:  # an empty key token is not a KV key
            raise NotFoundError(f"no checkpoint '' in {where(tk)}")
        entry = await self.entry(tk.index(checkpoint_id))
        if entry is None:
            raise NotFoundError(f"no checkpoint {checkpoint_id!r} in {where(tk)}")
        try:
            return _decode_index(entry.value or b"").version
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.corrupted(f"index {tk.index(checkpoint_id)!r}: {exc}") from None

    async def read_record(self, tk: ThreadKeys, version: int) -> Checkpoint | None:
        """Version ``version``'s record (without data and writes), None if absent.

        Raises:
            CheckpointCorruptedError: it does not decode or names another thread/version.
        """
        entry = await self.entry(tk.record(version))
        if entry is None:
            return None
        return msgspec.structs.replace(self.decode_record(tk, version, entry.value), data=b"")

    def decode_record(self, tk: ThreadKeys, version: int, value: bytes | None) -> Checkpoint:
        """Decode and check version ``version``'s record.

        Raises:
            CheckpointCorruptedError: it does not decode or names another thread/version.
        """
        key = tk.record(version)
        try:
            record = _decode_record(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.corrupted(f"record {key!r} does not decode: {exc}") from None
        if (record.agent_id, record.thread_id, record.namespace, record.version) != (
            tk.agent_id,
            tk.thread_id,
            tk.namespace,
            version,
        ):
            raise self.corrupted(f"record {key!r} names another checkpoint")
        return record

    async def read_writes(self, tk: ThreadKeys, checkpoint_id: str) -> tuple[CheckpointWrites, int]:
        """The pending writes of ``checkpoint_id`` and their revision (0 when none).

        Raises:
            CheckpointCorruptedError: the value does not decode.
        """
        entry = await self.entry(tk.writes(checkpoint_id))
        if entry is None:
            return CheckpointWrites(checkpoint_id=""), 0
        try:
            return _decode_writes(entry.value or b""), entry.revision or 0
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.corrupted(f"writes {tk.writes(checkpoint_id)!r}: {exc}") from None

    # -- put -----------------------------------------------------------------------
    async def put(
        self, req: PutCheckpoint, *, forked_from: CheckpointOrigin | None = None
    ) -> tuple[Checkpoint, Head]:
        """Append a version to the thread; return its record (without data) and the head.

        Raises:
            CheckpointConflictError: ``parent_id`` is not the latest (or a put won).
            ConflictError: ``checkpoint_id`` already exists in the thread.
            NotFoundError: a branch ``parent_id`` is not in the thread.
            ContractError: bad ids, both ``data`` and ``data_ref``, a bad ``data_ref``.
            CheckpointCorruptedError: the thread's head does not decode.
            NotStoredError: refused by the server, or versions kept being taken.
            UnavailableError: the record is stored but its head could not be written
                (the next put on the thread rolls it forward).
        """
        tk = self.keys(req.agent_id, req.thread_id, req.namespace)
        data, ref, digest, owned = await self._prepare_data(tk, req)
        try:
            record, head = await self._commit(tk, req, data, ref, digest, forked_from)
        except BaseException as exc:
            self.heads.forget(tk.head)
            if owned and ref is not None:
                await self.drop_upload(ref, exc)
            raise
        self.heads.put(tk.head, head)
        self.metrics.puts.labels("blob" if ref else "inline").inc()
        self.metrics.put_bytes.inc(record.size_bytes)
        logger.debug("checkpoint stored", key=tk.record(record.version), blob=ref is not None)
        return msgspec.structs.replace(record, data=b""), head

    async def _commit(
        self,
        tk: ThreadKeys,
        req: PutCheckpoint,
        data: bytes,
        ref: BlobRef | None,
        digest: str,
        forked_from: CheckpointOrigin | None,
    ) -> tuple[Checkpoint, Head]:
        id_taken = self.entry(tk.index(req.checkpoint_id)) if req.checkpoint_id else _none()
        parent = (
            self.version_of(tk, req.parent_id) if req.branch and req.parent_id else _none()
        )  # a branch's parent must be in the thread
        cached = self.heads.get(tk.head)  # a guess: see ``agentbus_checkpoint.head``
        head_read = _known(cached) if cached is not None else self.read_head(tk)
        head, used, _ = await asyncio.gather(head_read, id_taken, parent)
        if used is not None:
            raise ConflictError(f"checkpoint {req.checkpoint_id!r} already exists in {where(tk)}")
        if cached is not None and not req.branch and req.parent_id != head.checkpoint_id:
            head = await self.read_head(tk)  # another writer may have moved it
        kv = await self.kv()
        for _ in range(self.settings.put_attempts):
            if not req.branch and req.parent_id != head.checkpoint_id:
                self.metrics.conflicts.inc()
                raise CheckpointConflictError(req.parent_id, head.checkpoint_id, where(tk))
            version = head.next_version
            record = Checkpoint(
                checkpoint_id=req.checkpoint_id or new_checkpoint_id(version),
                agent_id=tk.agent_id,
                thread_id=tk.thread_id,
                namespace=tk.namespace,
                version=version,
                created_at=utcnow(),
                sha256=digest,
                data=data,
                size_bytes=ref.size_bytes if ref else len(data),
                data_ref=ref,
                parent_id=req.parent_id,
                metadata=req.metadata,
                forked_from=forked_from,
            )
            if await create_version(kv, tk.record(version), encode(record)):
                try:
                    return record, await advance_head(self, tk, record, head, req.retention)
                except CheckpointConflictError:
                    raise  # the record was dropped again
                except Exception as exc:  # stored: never ``refused`` (its upload stays)
                    raise UnavailableError(
                        f"version {version} of {where(tk)} is stored, its head not: {exc!r}"
                    ) from exc
            winner, head = await roll_forward(self, tk, head)
            if not req.branch:
                self.metrics.conflicts.inc()
                latest = winner.checkpoint_id if winner else head.checkpoint_id
                raise CheckpointConflictError(
                    req.parent_id, latest, f"{where(tk)} (a concurrent put won)"
                )
        raise NotStoredError(
            f"versions of {where(tk)} kept being taken: gave up after "
            f"{self.settings.put_attempts} attempts"
        )

    async def _prepare_data(
        self, tk: ThreadKeys, req: PutCheckpoint
    ) -> tuple[bytes, BlobRef | None, str, bool]:
        """``(inline data, blob ref, sha256 hex, whether we uploaded the blob)``."""
        if req.data_ref is None:
            data = req.data
            digest = hashlib.sha256(data).hexdigest()
            if len(data) <= self.settings.inline_max_bytes:
                return data, None, digest, False
            ref = await put_blob(
                self.bus,
                tk.blob_name(uuid.uuid4().hex),
                data,
                bucket=self.bus.names.checkpoint_blobs_bucket,
            )
            return b"", ref, digest, True
        if req.data:
            raise ContractError("give data or data_ref, not both")
        ref = req.data_ref
        await self.check_upload(tk, ref)
        if (used := await self.entry(tk.blob_index(ref.name))) is not None:
            raise ContractError(
                f"data_ref {ref.name!r} is already the data of a version "
                f"(index revision {used.revision}): upload the data again"
            )
        return b"", ref, ref.sha256, False

    async def check_upload(self, tk: ThreadKeys, ref: BlobRef, *, write: bool = False) -> None:
        """Check a client's upload: the thread's, stored as described, fresh enough.

        ``write``: a pending write's value (``<prefix>/w/<32 hex>``), else checkpoint
        data (``<prefix>/<32 hex>``).

        Raises:
            ContractError: another bucket, name or thread; missing; size or SHA-256
                differ from the object's; older than half ``orphan_grace_s``.
        """
        bucket = self.bus.names.checkpoint_blobs_bucket
        name = BlobName.parse(ref.name)
        if ref.bucket != bucket or name is None or name.prefix != tk.prefix or name.write != write:
            layout = f"{tk.prefix}/w/<32 hex>" if write else f"{tk.prefix}/<32 hex>"
            raise ContractError(
                f"data_ref must name an object {layout} in {bucket!r}, "
                f"not {ref.name!r} in {ref.bucket!r}"
            )
        stored = await object_meta(self.bus, bucket, ref.name)
        if stored is None:
            raise ContractError(f"data_ref {ref.name!r} does not exist")
        if stored.info.size != ref.size_bytes or stored.info.digest != object_digest(ref.sha256):
            raise ContractError(f"data_ref {ref.name!r} does not match its object's SHA-256/size")
        age_s = (utcnow() - stored.stored_at).total_seconds()
        if age_s > self.settings.orphan_grace_s / 2:  # the sweep may take it before we commit
            raise ContractError(
                f"data_ref {ref.name!r} was uploaded {age_s:.0f} s ago, more than half "
                f"the orphan grace ({self.settings.orphan_grace_s:.0f} s): upload it again"
            )

    # -- get -----------------------------------------------------------------------
    async def get(self, req: GetCheckpoint) -> Checkpoint:
        """The latest version (or ``req.checkpoint_id``) with data (or ref) and writes.

        Raises:
            NotFoundError: empty thread or no such checkpoint.
            CheckpointCorruptedError: see the module docstring.
        """
        tk = self.keys(req.agent_id, req.thread_id, req.namespace)
        if req.checkpoint_id is not None:
            version = await self.version_of(tk, req.checkpoint_id)
            want = req.checkpoint_id
        else:
            head = await self.read_head(tk)
            if head.value is None:
                raise NotFoundError(f"no checkpoint in {where(tk)}")
            version, want = head.value.version, head.value.checkpoint_id
        entry, (writes, _) = await asyncio.gather(
            self.entry(tk.record(version)), self.read_writes(tk, want)
        )
        record = None if entry is None else self.decode_record(tk, version, entry.value)
        if record is None or record.checkpoint_id != want:
            if req.checkpoint_id is not None:  # a stale index entry: the version is gone
                raise NotFoundError(f"no checkpoint {want!r} in {where(tk)}")
            raise self.corrupted(f"head of {where(tk)} names missing version {version}")
        data = await self._data(tk, record)
        key = tk.writes(record.checkpoint_id)
        if writes.writes and writes.checkpoint_id != record.checkpoint_id:
            raise self.corrupted(f"writes {key!r} belong to another checkpoint")
        for w in writes.writes:
            if w.data_ref is None and hashlib.sha256(w.data).hexdigest() != w.sha256:
                raise self.corrupted(f"a write in {key!r} fails its SHA-256")
        return msgspec.structs.replace(
            record, data=data, writes=sorted(writes.writes, key=write_order)
        )

    async def _data(self, tk: ThreadKeys, record: Checkpoint) -> bytes:
        """The record's inline data, checked (empty when it is in the Object Store).

        Versions stored before the data moved into the record keep it under
        ``<prefix>.v.<n>.data``; their record has no data but the data's SHA-256.

        Raises:
            CheckpointCorruptedError: the data is missing or fails its SHA-256.
        """
        key = tk.record(record.version)
        if record.data_ref is not None:
            if record.data_ref.sha256 != record.sha256:
                raise self.corrupted(f"data_ref of {key!r} disagrees with its record")
            return b""
        data = record.data
        if not data and hashlib.sha256(data).hexdigest() != record.sha256:
            stored = await self.entry(tk.data(record.version))
            if stored is None:
                raise self.corrupted(f"data of {key!r} is missing")
            data = stored.value or b""
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise self.corrupted(f"data of {key!r} fails its SHA-256 check")
        return data

    async def drop_upload(self, ref: BlobRef, exc: BaseException) -> None:
        """Delete ``ref``, uploaded for a write that failed with ``exc``, if ``refused``.

        Otherwise the write may have been stored: the object is left to the orphan sweep.
        """
        if refused(exc):
            await self.delete_blobs([ref])
            self.metrics.orphans_deleted.labels("refused").inc()
        else:
            logger.info("upload left to the orphan sweep", name=ref.name, error=repr(exc))

    async def delete_blobs(self, refs: Sequence[BlobRef]) -> None:
        """Delete Object Store objects (missing ones are fine; failures are logged)."""
        if not refs:
            return
        for ref in refs:
            try:
                await delete_object(self.bus, self.bus.names.checkpoint_blobs_bucket, ref.name)
            except nats.js.errors.ObjectNotFoundError:
                pass
            except Exception as exc:
                logger.warning("could not delete checkpoint blob", name=ref.name, error=repr(exc))
