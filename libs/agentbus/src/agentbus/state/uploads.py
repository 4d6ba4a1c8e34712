"""Checkpoint data too large for one request: uploaded to the Object Store, checked back.

A checkpoint request must fit ``max_payload`` (1 MiB by default, bytes base64 inside
JSON). Data over ``upload_min_bytes`` goes first to ``<p>_checkpoint_blobs`` as
``<thread prefix>/<32 hex>`` (checkpoints) or ``<thread prefix>/w/<32 hex>`` (pending
writes) and travels by reference; whatever comes back by reference is fetched and
checked against its SHA-256 before anyone sees it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import msgspec
from loguru import logger

from agentbus.bus import Bus
from agentbus.bus.blobs import get_blob, put_blob
from agentbus.bus.objects import delete_object
from agentbus.errors import CheckpointCorruptedError, ContractError, NotFoundError
from agentbus.messages import BlobRef, Checkpoint, PendingWrite
from agentbus.names import escape_token

_REQUEST_HEADROOM_BYTES = 64 * 1024
"""Room left in a put request for the envelope (ids, metadata) and headers."""
_WRITE_ENVELOPE_BYTES = 512
"""Room counted per pending write for its fields besides the value (ids, channel)."""


def thread_key_prefix(agent_id: str, thread_id: str, namespace: str = "") -> str:
    """KV key prefix of a thread: ``<A>.<T>`` or ``<A>.<T>.ns.<N>`` (``escape_token``s)."""
    prefix = f"{escape_token(agent_id)}.{escape_token(thread_id)}"
    return f"{prefix}.ns.{escape_token(namespace)}" if namespace else prefix


def upload_min_bytes(bus: Bus) -> int:
    """Data longer than this (bytes) goes to the Object Store before its request."""
    return (bus.nc.max_payload - _REQUEST_HEADROOM_BYTES) * 3 // 4


async def upload(bus: Bus, prefix: str, data: bytes, *, kind: str = "") -> BlobRef:
    """Store ``data`` as ``<prefix>/[<kind>/]<32 hex>`` in the checkpoint blobs bucket."""
    name = f"{prefix}/{kind + '/' if kind else ''}{uuid.uuid4().hex}"
    return await put_blob(bus, name, data, bucket=bus.names.checkpoint_blobs_bucket)


async def fit_writes(
    bus: Bus, prefix: str, writes: Sequence[PendingWrite]
) -> tuple[list[PendingWrite], list[BlobRef]]:
    """``(writes that fit one request, refs uploaded for them)``: largest values out first.

    On any failure the uploads made so far are deleted and the error re-raised.
    """
    fitted = list(writes)
    inline = sum(len(w.data) + _WRITE_ENVELOPE_BYTES for w in fitted)
    uploads: list[BlobRef] = []
    limit = upload_min_bytes(bus)
    for i in sorted(range(len(fitted)), key=lambda i: len(fitted[i].data), reverse=True):
        if inline <= limit or not fitted[i].data:
            break
        w = fitted[i]
        try:
            ref = await upload(bus, prefix, w.data, kind="w")
        except BaseException:
            for done in uploads:
                await delete_upload_quietly(bus, done)
            raise
        uploads.append(ref)
        inline -= len(w.data)
        fitted[i] = msgspec.structs.replace(w, data=b"", data_ref=ref, sha256=ref.sha256)
    return fitted, uploads


async def delete_upload_quietly(bus: Bus, ref: BlobRef) -> None:
    """Delete an upload a refused request left behind; a failure is only logged.

    An agent's connection (``Bus.provisioned``) may not purge the object's chunks: it
    leaves the upload, unreferenced, to the checkpoint service's orphan sweep.
    """
    if bus.provisioned:
        logger.info("upload left to the orphan sweep", name=ref.name)
        return
    try:
        await delete_object(bus, ref.bucket, ref.name)
    except Exception as exc:
        logger.warning("could not delete checkpoint upload", name=ref.name, error=repr(exc))


async def resolve(bus: Bus, ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with referenced data fetched and every digest checked, writes included.

    Raises:
        CheckpointCorruptedError: data is gone or fails its SHA-256.
    """
    data = await _fetch(bus, ckpt.data, ckpt.data_ref, ckpt.sha256, ckpt.checkpoint_id)
    writes = [
        msgspec.structs.replace(
            w, data=await _fetch(bus, w.data, w.data_ref, w.sha256, ckpt.checkpoint_id)
        )
        for w in ckpt.writes
    ]
    return msgspec.structs.replace(ckpt, data=data, writes=writes)


async def _fetch(bus: Bus, data: bytes, ref: BlobRef | None, sha256: str, what: str) -> bytes:
    if ref is not None:
        try:
            data = await get_blob(bus, ref)
        except NotFoundError:
            raise CheckpointCorruptedError(f"data of {what} ({ref.name}) is gone") from None
        except ContractError:
            raise CheckpointCorruptedError(f"data of {what} fails its SHA-256") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointCorruptedError(f"data of {what} fails its SHA-256")
    return data
