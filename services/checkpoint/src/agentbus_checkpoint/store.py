"""Checkpoint storage: versioned records in KV, large data in the Object Store.

See ``agentbus_checkpoint.keys`` for the key layout. Rules:

* ``put`` appends a version to a thread. ``parent_id`` must name the thread's
  current latest checkpoint (optimistic concurrency); on an empty thread it must be
  None. ``parent_id`` None on a non-empty thread is a conflict too: a writer must
  say which state it built on. A lost race (another put moved the head between our
  read and our compare-and-set) is the same ``ConflictError``.
* The service computes the SHA-256 of the data and checks it on every ``get``; a
  record that does not decode, or data that fails its digest, is a
  ``ContractError`` ("corrupted"), never data.
* Data over ``inline_max_bytes`` is stored in the Object Store
  (``checkpoints/sha256/<hex>``) and the record carries ``data_ref`` with empty
  ``data``. A caller whose data is too large for one request (1 MiB payload limit,
  base64 on the wire) uploads it first with ``agentbus.blobs.put_blob`` under that
  name and sends ``PutCheckpoint(data=b"", data_ref=ref)``; the service fetches it
  and checks its digest before recording it.
* ``get`` returns blob data inline when the encoded reply fits the server's
  ``max_payload`` (about 760 KiB of data at the default 1 MiB); otherwise the reply
  carries ``data_ref`` with empty ``data`` and the caller fetches it with
  ``agentbus.blobs.get_blob`` (which checks the digest).
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec
import nats.js.errors
from loguru import logger

from agentbus import blobs
from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError, NotFoundError
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointHead,
    CheckpointReply,
    GetCheckpoint,
    PutCheckpoint,
    encode,
    utcnow,
)
from agentbus_checkpoint.keys import blob_name, head_key, thread_prefix, version_key
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.settings import CheckpointSettings

_decode_head = msgspec.json.Decoder(CheckpointHead).decode
_decode_checkpoint = msgspec.json.Decoder(Checkpoint).decode
_REPLY_HEADROOM_BYTES = 4 * 1024
"""Room left in a reply for headers and framing."""


def new_checkpoint_id(version: int) -> str:
    """``<version:012d>-<8 hex>``: unique, and sorts in version order."""
    return f"{version:012d}-{uuid.uuid4().hex[:8]}"


class CheckpointStore:
    """Put and get checkpoints in KV ``<p>_checkpoints`` (see the module docstring)."""

    def __init__(self, bus: Bus, settings: CheckpointSettings, metrics: CheckpointMetrics):
        self.bus = bus
        self.settings = settings
        self.metrics = metrics

    def _prefix(self, agent_id: str, thread_id: str) -> str:
        return thread_prefix(agent_id, thread_id, max_chars=self.settings.max_id_chars)

    async def put(self, req: PutCheckpoint) -> Checkpoint:
        """Append a version to ``(req.agent_id, req.thread_id)``.

        Raises:
            ContractError: bad ids, both ``data`` and ``data_ref``, a ``data_ref``
                that is missing or fails its digest, or a corrupted head record.
            ConflictError: ``req.parent_id`` is not the thread's latest checkpoint.
        """
        prefix = self._prefix(req.agent_id, req.thread_id)
        where = f"agent {req.agent_id!r} thread {req.thread_id!r}"
        kv = await self.bus.kv(self.bus.names.checkpoints_bucket)
        head_entry = await _get_entry(kv, head_key(prefix))
        head = self._decode_head(head_entry, where) if head_entry else None
        latest = head.checkpoint_id if head else None
        if req.parent_id != latest:
            self.metrics.conflicts.inc()
            raise ConflictError(
                f"parent_id {req.parent_id!r} is not the latest checkpoint {latest!r} of {where}"
            )
        version = head.version + 1 if head else 1
        data, ref, digest = await self._store_data(req)
        record = Checkpoint(
            checkpoint_id=new_checkpoint_id(version),
            agent_id=req.agent_id,
            thread_id=req.thread_id,
            version=version,
            created_at=utcnow(),
            sha256=digest,
            data=data,
            data_ref=ref,
            parent_id=req.parent_id,
            metadata=req.metadata,
        )
        vkey = version_key(prefix, record.checkpoint_id)
        await kv.create(vkey, encode(record))
        new_head = encode(
            CheckpointHead(
                checkpoint_id=record.checkpoint_id, version=version, updated_at=record.created_at
            )
        )
        try:
            if head_entry is None:
                await kv.create(head_key(prefix), new_head)
            else:
                await kv.update(head_key(prefix), new_head, last=head_entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.metrics.conflicts.inc()
            await _delete_quietly(kv, vkey)
            now_entry = await _get_entry(kv, head_key(prefix))
            now = self._decode_head(now_entry, where).checkpoint_id if now_entry else None
            raise ConflictError(
                f"parent_id {req.parent_id!r} is not the latest checkpoint {now!r} of {where} "
                "(a concurrent put won)"
            ) from None
        self.metrics.puts.labels("blob" if ref else "inline").inc()
        self.metrics.put_bytes.inc(ref.size_bytes if ref else len(data))
        logger.info("checkpoint stored", key=vkey, version=version, blob=ref is not None)
        return record

    async def _store_data(self, req: PutCheckpoint) -> tuple[bytes, BlobRef | None, str]:
        """``(inline data, blob ref, sha256 hex)`` for the request's data."""
        if req.data_ref is not None:
            if req.data:
                raise ContractError("give data or data_ref, not both")
            ref = req.data_ref
            if ref.name != blob_name(ref.sha256):
                raise ContractError(
                    f"data_ref name {ref.name!r} must be {blob_name(ref.sha256)!r} "
                    "(content-addressed by SHA-256)"
                )
            try:
                fetched = await blobs.get_blob(self.bus, ref)
            except NotFoundError as exc:
                raise ContractError(f"data_ref {ref.name!r} names no stored blob") from exc
            if len(fetched) != ref.size_bytes:
                raise ContractError(
                    f"data_ref says {ref.size_bytes} bytes, the blob has {len(fetched)}"
                )
            return b"", ref, ref.sha256
        digest = hashlib.sha256(req.data).hexdigest()
        if len(req.data) <= self.settings.inline_max_bytes:
            return req.data, None, digest
        return b"", await blobs.put_blob(self.bus, blob_name(digest), req.data), digest

    async def get(self, req: GetCheckpoint) -> Checkpoint:
        """The thread's latest checkpoint, or the one with ``req.checkpoint_id``.

        Raises:
            NotFoundError: the thread has no checkpoint, or not that one.
            ContractError: bad ids, or the stored checkpoint is corrupted.
        """
        prefix = self._prefix(req.agent_id, req.thread_id)
        where = f"agent {req.agent_id!r} thread {req.thread_id!r}"
        kv = await self.bus.kv(self.bus.names.checkpoints_bucket)
        checkpoint_id = req.checkpoint_id
        if checkpoint_id is None:
            head_entry = await _get_entry(kv, head_key(prefix))
            if head_entry is None:
                raise NotFoundError(f"no checkpoint for {where}")
            checkpoint_id = self._decode_head(head_entry, where).checkpoint_id
        vkey = version_key(prefix, checkpoint_id)
        entry = await _get_entry(kv, vkey)
        if entry is None:
            if req.checkpoint_id is None:
                raise self._corrupted(f"the head of {where} names missing {checkpoint_id!r}")
            raise NotFoundError(f"no checkpoint {checkpoint_id!r} for {where}")
        try:
            record = _decode_checkpoint(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._corrupted(f"record {vkey!r} does not decode: {exc}") from None
        if (record.checkpoint_id, record.agent_id, record.thread_id) != (
            checkpoint_id,
            req.agent_id,
            req.thread_id,
        ):
            raise self._corrupted(f"record {vkey!r} names another checkpoint")
        if record.data_ref is None:
            if hashlib.sha256(record.data).hexdigest() != record.sha256:
                raise self._corrupted(f"data of {vkey!r} fails its SHA-256 check")
            return record
        ref = record.data_ref
        if ref.sha256 != record.sha256 or record.data:
            raise self._corrupted(f"data_ref of {vkey!r} disagrees with its record")
        if not self._fits_reply(record):
            return record  # the caller fetches ref and checks its digest
        try:
            data = await blobs.get_blob(self.bus, ref)
        except NotFoundError:
            raise self._corrupted(f"blob {ref.name!r} of {vkey!r} is missing") from None
        except ContractError:
            raise self._corrupted(f"blob {ref.name!r} of {vkey!r} fails its SHA-256") from None
        return msgspec.structs.replace(record, data=data, data_ref=None)

    def _fits_reply(self, record: Checkpoint) -> bool:
        """Whether ``record`` with its blob data inline fits one reply message."""
        assert record.data_ref is not None
        envelope = len(encode(CheckpointReply(checkpoint=record)))
        data_b64 = 4 * ((record.data_ref.size_bytes + 2) // 3)
        limit = self.bus.nc.max_payload - _REPLY_HEADROOM_BYTES
        return envelope + data_b64 <= limit

    def _decode_head(self, entry: _Entry, where: str) -> CheckpointHead:
        try:
            return _decode_head(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._corrupted(f"the head record of {where} does not decode: {exc}") from None

    def _corrupted(self, detail: str) -> ContractError:
        self.metrics.corrupted.inc()
        logger.error("checkpoint corrupted", detail=detail)
        return ContractError(f"checkpoint corrupted: {detail}")


_Entry = nats.js.kv.KeyValue.Entry


async def _get_entry(kv: nats.js.kv.KeyValue, key: str) -> _Entry | None:
    """The key's current entry, or None if it does not exist or was deleted."""
    try:
        return await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None


async def _delete_quietly(kv: nats.js.kv.KeyValue, key: str) -> None:
    try:
        await kv.purge(key)
    except Exception as exc:  # an orphan version is harmless: no head points to it
        logger.warning("could not remove orphan checkpoint", key=key, error=repr(exc))
