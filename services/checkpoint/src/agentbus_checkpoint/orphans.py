"""The orphan sweep: delete checkpoint objects that no version references.

Checkpoint data over the inline limit is uploaded to ``<p>_checkpoint_blobs`` before
the put that references it (by the client when the data does not fit one request,
by the service otherwise, and pending-write values by the service before their KV
update). If the uploader dies in between, or the put times out without being
stored, nothing references the object. Refused puts delete their uploads at once
(``CheckpointStore.drop_upload``, the client on a conflict); this sweep takes the rest.

An object is an orphan when it is older than ``orphan_grace_s`` (age from the time
the server stored it, ``agentbus_checkpoint.objects``) and no version references it.
The grace protects uploads whose put is still coming: a put refuses a ``data_ref``
older than half the grace, so an object the sweep finds unreferenced can no longer
become referenced.

"Referenced" is decided without reading every record: a put writes
``<prefix>.b.<32 hex>`` right after the record of the version that references
``<prefix>/<32 hex>`` (and retention purges it with the version), so one subject
listing per thread gives the thread's referenced data objects. Only an object not
listed there (a true orphan, data stored before the index existed, or a version
whose writer died between its record and its index) costs a read
of the thread's records, and deleting it costs one more KV get of its index key.
Pending-write objects (``<prefix>/w/<32 hex>``) are checked against the thread's
writes values. Anything that does not decode keeps the thread's objects: a sweep
never deletes what it cannot prove unreferenced. Names outside the checkpoint
layout are left alone.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

import msgspec
import nats.js.errors
from loguru import logger

from agentbus.bus.objects import delete_object
from agentbus.messages import BlobRef, utcnow
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.keys import BlobName, ThreadKeys
from agentbus_checkpoint.objects import StoredObject, iter_objects


class _Refs(msgspec.Struct):
    """The part of a record (or a pending write) naming its object."""

    data_ref: BlobRef | None = None


class _WritesRefs(msgspec.Struct):
    """The part of a ``CheckpointWrites`` naming objects."""

    writes: list[_Refs] = []


_decode_refs = msgspec.json.Decoder(_Refs).decode
_decode_writes_refs = msgspec.json.Decoder(_WritesRefs).decode
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


class _ThreadRefs:
    """What one thread references, read lazily and at most once per refresh."""

    def __init__(self, house: Housekeeping, tk: ThreadKeys) -> None:
        self.house = house
        self.tk = tk
        self.read_at = time.monotonic()
        self.indexed: set[str] | None = None
        self.recorded: set[str] | None = None
        self.written: set[str] | None = None
        self.undecodable = False

    async def references(self, name: BlobName, full_name: str) -> bool:
        """Whether a version or a pending write of the thread names ``full_name``."""
        if name.write:
            if self.written is None:
                self.written = await self._written()
            return self.undecodable or full_name in self.written
        if self.indexed is None:
            keys = await self.house.stored_keys(self.tk, "b.*")
            self.indexed = {key.rsplit(".", 1)[-1] for key in keys}
        if name.token in self.indexed:
            return True
        if self.recorded is None:
            self.recorded = await self._recorded()
        if full_name in self.recorded:
            logger.warning("checkpoint object referenced but not indexed", name=full_name)
            return True
        return self.undecodable

    async def _recorded(self) -> set[str]:
        names: set[str] = set()
        for key in await self.house.stored_keys(self.tk, "v.*.rec"):
            entry = await self.house.store.entry(key)
            try:
                ref = _decode_refs(entry.value or b"").data_ref if entry else None
            except _DECODE_ERRORS:
                self.undecodable = True
                continue
            if ref is not None:
                names.add(ref.name)
        return names

    async def _written(self) -> set[str]:
        names: set[str] = set()
        for key in await self.house.stored_keys(self.tk, "w.*"):
            entry = await self.house.store.entry(key)
            try:
                writes = _decode_writes_refs(entry.value or b"").writes if entry else []
            except _DECODE_ERRORS:
                self.undecodable = True
                continue
            names.update(w.data_ref.name for w in writes if w.data_ref is not None)
        return names


class OrphanSweep:
    """Find and delete orphan objects of ``<p>_checkpoint_blobs`` (module docstring)."""

    def __init__(self, house: Housekeeping) -> None:
        self.house = house
        self.store = house.store
        self.settings = house.settings

    async def sweep(self) -> int:
        """Delete up to ``orphan_sweep_max`` orphans; return how many went.

        One pass over the objects' metadata, oldest first, stopping at the first
        object younger than ``orphan_grace_s``. Cost: one pull per 256 objects, one
        KV subject listing per thread with old objects, more only for orphans.
        """
        bus = self.store.bus
        grace_s = self.settings.orphan_grace_s
        now = utcnow()
        cutoff = now - timedelta(seconds=grace_s)
        threads: dict[str, _ThreadRefs] = {}
        deleted = 0
        objects = iter_objects(bus, bus.names.checkpoint_blobs_bucket)
        async with contextlib.aclosing(objects):
            async for obj in objects:
                if obj.stored_at > cutoff:
                    break  # stream order: every later object is younger still
                name = BlobName.parse(obj.name)
                tk = name.thread(max_chars=self.settings.max_id_chars) if name else None
                if name is None or tk is None:
                    continue  # not a checkpoint object name: not ours to judge
                refs = threads.get(name.prefix)
                if refs is None or time.monotonic() - refs.read_at > grace_s / 4:
                    refs = threads[name.prefix] = _ThreadRefs(self.house, tk)
                try:
                    if await refs.references(name, obj.name) or await self._indexed(
                        tk, name, obj.name
                    ):
                        continue
                    await self._delete(obj, (now - obj.stored_at).total_seconds())
                except nats.js.errors.ObjectNotFoundError:
                    continue  # deleted meanwhile (retention, a thread delete)
                except Exception as exc:  # one object must not stop the sweep
                    logger.warning("orphan check failed", name=obj.name, error=repr(exc))
                    continue
                deleted += 1
                if deleted >= self.settings.orphan_sweep_max:
                    break
        return deleted

    async def _indexed(self, tk: ThreadKeys, name: BlobName, full_name: str) -> bool:
        """A fresh look at a data object's index key, right before deleting it."""
        if name.write:
            return False
        return await self.store.entry(tk.blob_index(full_name)) is not None

    async def _delete(self, obj: StoredObject, age_s: float) -> None:
        bus = self.store.bus
        await delete_object(bus, bus.names.checkpoint_blobs_bucket, obj.name)
        self.store.metrics.orphans_deleted.labels("sweep").inc()
        logger.info(
            "orphan checkpoint object deleted",
            name=obj.name,
            age_s=round(age_s, 1),
            size_bytes=obj.info.size,
        )
