"""Pending writes: the per-task channel writes LangGraph attaches to a checkpoint id.

The writes of one checkpoint id are one KV value (``CheckpointWrites`` at
``<prefix>.w.<escaped id>``, layout in ``agentbus_checkpoint.keys``), updated by
compare-and-set. They are keyed by checkpoint id, not version, so they may arrive
before their checkpoint is stored (LangGraph's default "async" durability sends both
at once). A value over ``write_inline_max_bytes`` goes to the Object Store as
``<prefix>/w/<32 hex>``; ``CheckpointStore.get`` returns the writes with their
checkpoint, in LangGraph's order (``write_order``).

A client whose writes do not fit one request uploads the largest values itself, under
the same names, and sends them by ``data_ref`` (``CheckpointStore.check_upload``: the
thread's, matching size and SHA-256, younger than half ``orphan_grace_s``); all of a
request's writes are stored by one compare-and-set. The orphan sweep keeps every
``<prefix>/w/`` object a writes value names.
"""

from __future__ import annotations

import hashlib
import re
import uuid

import msgspec
import nats.js.errors

from agentbus.bus.blobs import put_blob
from agentbus.errors import ContractError
from agentbus.messages import CheckpointWrites, PendingWrite, PutWrites, encode
from agentbus_checkpoint.commit import NotStoredError
from agentbus_checkpoint.keys import ThreadKeys
from agentbus_checkpoint.store import CheckpointStore, write_order

_WRITES_ATTEMPTS = 32
CHECKPOINT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,127}$")
"""``agentbus.messages.CheckpointId``."""


class PendingWrites:
    """Attach pending writes to checkpoints of ``store``."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.settings = store.settings

    async def put(self, req: PutWrites) -> int:
        """Attach ``req.writes`` to a checkpoint; return how many writes it now has.

        Merge: a write for an existing ``(task_id, idx)`` is dropped when ``idx >= 0``
        and replaces it when ``idx < 0``. Compare-and-set on the writes key, retried;
        the first attempt creates the key without reading it (it usually is new).
        The checkpoint need not be stored yet (writes may overtake their checkpoint).

        Raises:
            ContractError: a bad id, a bad ``data_ref`` (or one with ``data`` too), or
                merged writes over ``writes_max_bytes``.
            NotStoredError: the writes kept changing under us (32 attempts).
        """
        store = self.store
        tk = store.keys(req.agent_id, req.thread_id, req.namespace)
        if not CHECKPOINT_ID_RE.match(req.checkpoint_id):
            raise ContractError(f"{req.checkpoint_id!r} is not a checkpoint id")
        key = tk.writes(req.checkpoint_id)
        for w in req.writes:
            if w.data_ref is not None:
                if w.data:
                    raise ContractError("give a write's data or data_ref, not both")
                await store.check_upload(tk, w.data_ref, write=True)
        incoming = [await self._store_write(tk, w) for w in req.writes]
        kv = await store.kv()
        # First as if the checkpoint had no writes yet (a create, no read: the common
        # case, one task's writes per step); a create that finds writes reads them.
        current, rev = CheckpointWrites(checkpoint_id=""), 0
        try:
            for attempt in range(_WRITES_ATTEMPTS):
                if attempt:
                    current, rev = await store.read_writes(tk, req.checkpoint_id)
                merged, dropped = merge_writes(current.writes, incoming)
                value = encode(CheckpointWrites(checkpoint_id=req.checkpoint_id, writes=merged))
                if len(value) > self.settings.writes_max_bytes:
                    raise ContractError(
                        f"the writes of checkpoint {req.checkpoint_id!r} would take "
                        f"{len(value)} bytes, more than {self.settings.writes_max_bytes}"
                    )
                try:
                    if rev == 0:
                        await kv.create(key, value)
                    else:
                        await kv.update(key, value, last=rev)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                kept = {w.data_ref.name for w in merged if w.data_ref is not None}
                await store.delete_blobs(  # a repeated request may name a kept object
                    [w.data_ref for w in dropped if w.data_ref and w.data_ref.name not in kept]
                )
                store.metrics.writes.inc(len(incoming))
                return len(merged)
            raise NotStoredError(f"writes of {req.checkpoint_id!r} kept changing; gave up")
        except BaseException as exc:
            for w, sent in zip(incoming, req.writes, strict=True):
                if w.data_ref is not None and sent.data_ref is None:  # ours, not the client's
                    await store.drop_upload(w.data_ref, exc)
            raise

    async def _store_write(self, tk: ThreadKeys, w: PendingWrite) -> PendingWrite:
        """``w`` with its SHA-256, its value moved to the Object Store if large."""
        if w.data_ref is not None:  # uploaded by the client, checked
            return msgspec.structs.replace(w, sha256=w.data_ref.sha256)
        digest = hashlib.sha256(w.data).hexdigest()
        if len(w.data) <= self.settings.write_inline_max_bytes:
            return msgspec.structs.replace(w, sha256=digest)
        bus = self.store.bus
        ref = await put_blob(
            bus,
            tk.blob_name(uuid.uuid4().hex, write=True),
            w.data,
            bucket=bus.names.checkpoint_blobs_bucket,
        )
        return msgspec.structs.replace(w, data=b"", data_ref=ref, sha256=digest)


def merge_writes(
    current: list[PendingWrite], incoming: list[PendingWrite]
) -> tuple[list[PendingWrite], list[PendingWrite]]:
    """``(merged writes, writes dropped from either side)`` (rule in ``PendingWrites.put``)."""
    by_key = {(w.task_id, w.idx): w for w in current}
    dropped: list[PendingWrite] = []
    for w in incoming:
        key = (w.task_id, w.idx)
        old = by_key.get(key)
        if old is not None and w.idx >= 0:
            dropped.append(w)
            continue
        if old is not None:
            dropped.append(old)
        by_key[key] = w
    return sorted(by_key.values(), key=write_order), dropped
