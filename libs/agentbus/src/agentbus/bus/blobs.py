"""Values too large to travel inline go to the Object Store, by reference.

NATS caps a message at ``max_payload`` (1 MiB by default) and KV values with it. A
task input or output whose JSON encoding exceeds ``BusSettings.inline_max_bytes``
(64 KiB by default) is stored in the Object Store ``<p>_blobs`` under a name derived
from the task id, and the message carries a ``BlobRef`` (bucket, name, size, SHA-256)
with the inline value ``null``. Readers fetch it and check the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus.connection import Bus
from agentbus.bus.objects import put_object
from agentbus.errors import ContractError, NotFoundError
from agentbus.messages import NULL, BlobRef, encode

T = TypeVar("T")


async def put_blob(bus: Bus, name: str, data: bytes, *, bucket: str | None = None) -> BlobRef:
    """Store ``data`` as ``name`` in ``bucket`` (default: blobs), replacing that name."""
    bucket = bucket or bus.names.blobs_bucket
    await put_object(bus, bucket, name, data)
    return BlobRef(
        bucket=bucket,
        name=name,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


async def get_blob(bus: Bus, ref: BlobRef) -> bytes:
    """Fetch the bytes ``ref`` points to (in ``ref.bucket``) and verify their SHA-256.

    Raises:
        NotFoundError: the object is gone (expired or deleted).
        ContractError: the bytes do not match ``ref.sha256``.
        UnavailableError: ``ref.bucket`` does not exist.
    """
    return b"".join([chunk async for chunk in await open_blob(bus, ref)])


async def open_blob(bus: Bus, ref: BlobRef) -> AsyncIterator[bytes]:
    """The bytes ``ref`` points to, as an iterator of chunks (at most 8 MiB held).

    The object is looked up now, its chunks are read as the iterator is consumed,
    and its SHA-256 is checked before the last chunk is given out: a stream that
    fails the check raises instead of ending, so a consumer never gets all the
    bytes of a corrupt object.

    Raises:
        NotFoundError: the object is gone (now, or chunks go missing while reading).
        ContractError: (from the iterator, at its end) the bytes fail ``ref.sha256``.
        UnavailableError: ``ref.bucket`` does not exist.
    """
    obs = await bus.object_store(ref.bucket)
    try:
        info = await obs.get_info(ref.name)
    except nats.js.errors.ObjectNotFoundError as exc:
        raise NotFoundError(f"blob {ref.name!r} not found in {ref.bucket!r}") from exc
    return _checked(ref, _read_chunks(bus, ref.bucket, info.nuid, info.chunks or 0))


async def _checked(ref: BlobRef, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, the last one held back until the whole passed the digest check."""
    digest = hashlib.sha256()
    held: bytes | None = None
    async for chunk in chunks:
        digest.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if digest.hexdigest() != ref.sha256:
        raise ContractError(f"blob {ref.name!r} fails its SHA-256 check")
    if held is not None:
        yield held


_CHUNKS_PER_FETCH = 64
"""Object Store chunks (128 KiB each) per pull request: 8 MiB."""


async def _read_chunks(bus: Bus, bucket: str, nuid: str, chunks: int) -> AsyncIterator[bytes]:
    """An object's chunks in order, through an ephemeral pull consumer.

    nats-py's ``ObjectStore.get`` reads through an ordered push consumer and took
    about 270 ms for 4 MiB here; batched pulls take 10-25 ms (``just bench state``).

    Raises:
        NotFoundError: fewer chunks than the object's metadata says (deleted meanwhile).
    """
    if chunks == 0:
        return
    sub = await bus.js.pull_subscribe(
        f"$O.{bucket}.C.{nuid}",
        stream=f"OBJ_{bucket}",
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=10.0,
            mem_storage=True,
        ),
    )
    read = 0
    try:
        while read < chunks:
            try:
                msgs = await sub.fetch(min(chunks - read, _CHUNKS_PER_FETCH), timeout=5)
            except TimeoutError:
                raise NotFoundError(f"object {nuid!r} in {bucket!r} lost chunks") from None
            read += len(msgs)
            for m in msgs:
                yield m.data
    finally:
        await sub.unsubscribe()


async def pack(bus: Bus, value: Any, *, name: str) -> tuple[msgspec.Raw, BlobRef | None]:
    """Encode ``value`` as JSON; inline if small, else into the Object Store as ``name``.

    Returns:
        ``(raw, None)`` for an inline value, or ``(NULL, ref)`` for a stored one.
    """
    data = value if isinstance(value, msgspec.Raw) else encode(value)
    if len(data) <= bus.settings.inline_max_bytes:
        return msgspec.Raw(data), None
    return NULL, await put_blob(bus, name, bytes(data))


async def unpack(bus: Bus, raw: msgspec.Raw, ref: BlobRef | None, type_: type[T]) -> T:
    """Decode a value packed by ``pack`` as ``type_``.

    Raises:
        ContractError: the value does not decode as ``type_`` or fails its digest.
        NotFoundError: the referenced blob is gone.
    """
    data = await get_blob(bus, ref) if ref is not None else bytes(raw)
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(
            f"value is not a valid {getattr(type_, '__name__', type_)}: {exc}"
        ) from exc
