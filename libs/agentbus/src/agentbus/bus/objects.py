"""Object Store writes without rollup headers: the contract's object stores refuse them.

Agents may publish to ``$O.<p>_blobs.>`` and ``$O.<p>_checkpoint_blobs.>``, and subject
permissions cannot look at headers: were rollups allowed, ``Nats-Rollup: all`` on any
meta subject would purge a whole bucket. So the streams refuse ``Nats-Rollup``
(``agentbus.bus.contract``), and nats-py's ``ObjectStore.put`` and ``delete``, which
publish the meta message with ``Nats-Rollup: sub``, would be refused with them.

``put_object`` and ``delete_object`` write the same layout (ADR-20) without the
header, so nats-py's ``ObjectStore.get``/``get_info`` and nats.js read what they
write: chunks of 128 KiB on ``$O.<bucket>.C.<nuid>``, then the meta JSON on
``$O.<bucket>.M.<base64url(name)>``. Readers take the last meta message of a subject;
the older ones, and the chunks of a replaced or deleted object, go by STREAM.PURGE with
a subject filter (not a rollup), which service identities may request and agents may
not: on an agent's connection (``Bus.provisioned``) they stay until the bucket's TTL
or a service's cleanup (the checkpoint service's orphan sweep) takes them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import deque
from datetime import UTC, datetime

import nats.js.errors
from loguru import logger
from nats.js.api import ObjectInfo, ObjectMetaOptions
from nats.nuid import NUID

from agentbus.bus.connection import Bus

CHUNK_SIZE_BYTES = 128 * 1024
"""Bytes per chunk message: nats-py's and nats.js's default."""
_CHUNKS_IN_FLIGHT = 16
"""Chunk publishes awaiting their ack at once (2 MiB)."""
_nuid = NUID()


def stream_name(bucket: str) -> str:
    """The stream holding Object Store ``bucket``: ``OBJ_<bucket>``."""
    return f"OBJ_{bucket}"


def meta_subject(bucket: str, name: str) -> str:
    """Subject of object ``name``'s meta messages: ``$O.<bucket>.M.<base64url(name)>``."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def chunk_subject(bucket: str, nuid: str) -> str:
    """Subject of the chunks of the object stored under ``nuid``: ``$O.<bucket>.C.<nuid>``."""
    return f"$O.{bucket}.C.{nuid}"


async def object_info(bus: Bus, bucket: str, name: str) -> ObjectInfo | None:
    """Object ``name``'s last meta in ``bucket`` (a deleted one too), None if it has none.

    Raises:
        nats.js.errors.BadObjectMetaError: the meta message is not an object's meta.
    """
    try:
        msg = await bus.js.get_last_msg(stream_name(bucket), meta_subject(bucket, name))
    except nats.js.errors.NotFoundError:
        return None
    try:
        info: ObjectInfo = ObjectInfo.from_response(json.loads(msg.data or b""))
    except (ValueError, TypeError) as exc:
        raise nats.js.errors.BadObjectMetaError from exc
    return info


async def put_object(bus: Bus, bucket: str, name: str, data: bytes) -> ObjectInfo:
    """Store ``data`` as object ``name`` in ``bucket``, replacing an object of that name.

    Every publish is acked by the stream. A service's connection then purges the
    replaced object's chunks and the name's older meta messages.

    Returns:
        The meta as written (``size`` in bytes, ``chunks``, ``digest`` ``SHA-256=<b64url>``).

    Raises:
        nats.js.errors.APIError: the stream refused a message (full, or it is gone).
        TimeoutError: an ack did not come within ``request_timeout_s``.
    """
    stream = stream_name(bucket)
    old = await object_info(bus, bucket, name)
    nuid = _nuid.next().decode()
    chunks_subject = chunk_subject(bucket, nuid)
    publisher = await bus.publisher()
    in_flight: deque[asyncio.Future[int]] = deque()
    chunks = 0
    try:
        for start in range(0, len(data), CHUNK_SIZE_BYTES):
            if len(in_flight) >= _CHUNKS_IN_FLIGHT:
                await in_flight.popleft()
            chunk = data[start : start + CHUNK_SIZE_BYTES]
            in_flight.append(await publisher.publish(chunks_subject, chunk))
            chunks += 1
        while in_flight:
            await in_flight.popleft()
        info = ObjectInfo(
            name=name,
            bucket=bucket,
            nuid=nuid,
            size=len(data),
            chunks=chunks,
            mtime=datetime.now(UTC).isoformat(),
            digest="SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode(),
            options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE_BYTES),
        )
        await bus.js.publish(meta_subject(bucket, name), json.dumps(info.as_dict()).encode())
    except BaseException:
        for future in in_flight:  # their outcome no longer matters; never unretrieved
            if not future.cancel() and not future.cancelled():
                future.exception()
        await _purge_quietly(bus, stream, chunks_subject)
        raise
    if old is not None and not old.deleted and old.nuid:
        await _purge_quietly(bus, stream, chunk_subject(bucket, old.nuid))
    if old is not None:
        await _purge_quietly(bus, stream, meta_subject(bucket, name), keep=1)
    return info


async def delete_object(bus: Bus, bucket: str, name: str) -> None:
    """Delete object ``name`` from ``bucket``: a meta marked ``deleted``, chunks purged.

    Needs STREAM.PURGE rights on ``OBJ_<bucket>`` (a service identity's, not an agent's).

    Raises:
        nats.js.errors.ObjectNotFoundError: no such object (never stored, or deleted).
        nats.js.errors.APIError: the stream refused the marker or the purge.
        TimeoutError: no answer within ``request_timeout_s`` (a purge without rights too).
    """
    info = await object_info(bus, bucket, name)
    if info is None or info.deleted:
        raise nats.js.errors.ObjectNotFoundError
    stream = stream_name(bucket)
    marker = ObjectInfo(
        name=info.name,
        bucket=bucket,
        nuid=info.nuid,
        size=0,
        chunks=0,
        mtime="",
        digest="",
        deleted=True,
        description=info.description,
        headers=info.headers,
        options=info.options,
    )
    subject = meta_subject(bucket, name)
    await bus.js.publish(subject, json.dumps(marker.as_dict()).encode())
    if info.nuid:
        await bus.js.purge_stream(stream, subject=chunk_subject(bucket, info.nuid))
    await bus.js.purge_stream(stream, subject=subject, keep=1)


async def _purge_quietly(bus: Bus, stream: str, subject: str, *, keep: int | None = None) -> None:
    """Purge ``subject`` from ``stream`` (keeping the last ``keep``) if a service's bus.

    Cleanup only: a failure is logged, never raised; an agent's connection skips it.
    """
    if bus.provisioned:
        return
    try:
        await bus.js.purge_stream(stream, subject=subject, keep=keep)
    except Exception as exc:
        logger.warning("object store purge failed", stream=stream, subject=subject, error=repr(exc))
