"""Committing a checkpoint version: one create-only message, then its index and head.

A put commits version ``n`` (the head's ``next_version``) with **one** message: the
record with its data inline (or its ``data_ref``), written to ``<prefix>.v.<n>.rec``
as a KV *create* (``Nats-Expected-Last-Subject-Sequence: 0``): the server stores it
only if no version ``n`` exists, so of two puts racing for one head exactly one
creates it, and the loser learns who won by reading that key. A stored record is
the version: everything else is written after it and can be derived from it.

After the record, on the same connection and in this order, the id index
``<prefix>.id.<id>``, the object index ``<prefix>.b.<32 hex>`` (data in the Object
Store only) and the head (compare-and-set on the revision read) are published
without waiting in between; the put replies once all are acknowledged. A head
compare-and-set lost to retention bookkeeping or a version delete is retried on the
head read again.

A writer that dies after the record leaves the head one version behind: the version
is stored but not yet the head's. The next put on the thread finds version ``n``
taken, *rolls the head forward* to it (writing its index and head exactly as its
writer would have) and gets ``CheckpointConflictError`` naming it, as it would have
had the writer lived. Readers follow the head and the index, which are written after
the record, so a reader never meets a version whose record is missing.

Why not one atomic batch (record, data, index and head together, ADR-50): on a
single-replica file stream nats-server stages every batch in a temporary on-disk
store, which cost about 3 ms of server time per put, ten times a plain publish
(docs/decisions/0012-checkpoint-commit.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.kv import KeyValue

from agentbus.errors import CheckpointConflictError, UnavailableError
from agentbus.messages import Checkpoint, CheckpointHead, CheckpointIndex, Retention, encode, utcnow
from agentbus_checkpoint.head import Head
from agentbus_checkpoint.keys import ThreadKeys, where

if TYPE_CHECKING:
    from agentbus_checkpoint.store import CheckpointStore


class NotStoredError(UnavailableError):
    """The server refused the write (or the writer gave up retrying): nothing was stored.

    Unlike a timeout or a lost connection, whose write may have been stored, this
    outcome is certain, so data uploaded for the write may be deleted at once.
    """


async def create_version(kv: KeyValue, key: str, record: bytes) -> bool:
    """Store ``record`` under ``key`` if no live value is there; whether it was stored.

    A key holding only a delete or purge marker counts as free (nats-py's
    ``KeyValue.create``).

    Raises:
        NotStoredError: the server refused the write for another reason.
    """
    try:
        await kv.create(key, record)
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    except nats.js.errors.APIError as exc:
        raise NotStoredError(f"checkpoint record {key!r} not stored: {exc}") from exc
    return True


async def publish_after(
    kv: KeyValue, indexes: Sequence[tuple[str, bytes]], head: tuple[str, bytes, int]
) -> int | None:
    """Write ``indexes`` (key, value) then the head (key, value, expected revision).

    All are published before any acknowledgement is awaited, in this order, on one
    connection, so the server stores the indexes before the head. Returns the head's
    new revision, or None when its revision was no longer the one expected.

    Raises:
        UnavailableError: an index, or the head for another reason, was refused (the
            record is stored all the same).
    """
    head_key, head_value, revision = head
    writes = [kv.put(key, value) for key, value in indexes]
    writes.append(kv.update(head_key, head_value, last=revision))
    *puts, moved = await asyncio.gather(*writes, return_exceptions=True)
    for (key, _), result in zip(indexes, puts, strict=True):
        if isinstance(result, BaseException):
            raise UnavailableError(f"checkpoint index {key!r} not stored: {result!r}") from result
    if isinstance(moved, nats.js.errors.KeyWrongLastSequenceError):
        return None
    if isinstance(moved, BaseException):
        raise UnavailableError(f"checkpoint head {head_key!r} not stored: {moved!r}") from moved
    return int(moved)


async def advance_head(
    store: CheckpointStore,
    tk: ThreadKeys,
    record: Checkpoint,
    head: Head,
    retention: Retention | None = None,
) -> Head:
    """Write the indexes of ``record`` (stored) and make it the head's latest version.

    ``head``: the head as read before ``record`` was stored. Returns the head as
    left, which may already be past ``record`` when another writer advanced it.

    Raises:
        CheckpointConflictError: the thread, or the versions up to ``record``'s
            number, were deleted meanwhile (``record`` and its indexes are purged).
        UnavailableError: an index or the head could not be written (``record``
            is stored; the next put on the thread rolls the head forward).
        CheckpointCorruptedError: the head read again does not decode.
    """
    kv = await store.kv()
    index = encode(CheckpointIndex(version=record.version))
    indexes = [(key, index) for key in version_keys(tk, record)[1:]]  # all but the record
    built_on = head.checkpoint_id  # only bookkeeping (retention) may move it meanwhile
    for _ in range(store.settings.put_attempts):
        value = CheckpointHead(
            checkpoint_id=record.checkpoint_id,
            version=record.version,
            updated_at=utcnow(),
            oldest_version=head.stored.oldest_version if head.stored else 1,
            retention=retention or (head.stored.retention if head.stored else None),
        )
        revision = await publish_after(kv, indexes, (tk.head, encode(value), head.revision))
        if revision is not None:
            if head.stored is None and await store.entry(tk.record(record.version)) is None:
                # A thread delete purged the record before this first head landed.
                await kv.delete(tk.head, last=revision)
                raise CheckpointConflictError(
                    record.parent_id, None, f"{where(tk)} (the thread was deleted meanwhile)"
                )
            return Head(value, revision)
        indexes = []  # stored with the first attempt
        head = await store.read_head(tk)
        if head.version_at_least(record.version):
            return head  # advanced to (or past) the record by another writer
        if (
            head.stored is None
            or head.checkpoint_id != built_on
            or head.next_version != record.version
        ):
            # The head is gone (a thread delete), names another version (a version
            # delete moved it; the thread was deleted and started again) or went past
            # the record without naming it: the record is no version of the thread.
            await _discard(kv, version_keys(tk, record))
            raise CheckpointConflictError(
                record.parent_id,
                head.checkpoint_id,
                f"{where(tk)} (the thread or its latest versions were deleted meanwhile)",
            )
    raise UnavailableError(
        f"version {record.version} of {where(tk)} is stored but the head kept moving; "
        "the next put rolls it forward"
    )


async def roll_forward(
    store: CheckpointStore, tk: ThreadKeys, head: Head
) -> tuple[Checkpoint | None, Head]:
    """Finish the version above ``head`` that another writer stored (``commit``).

    Returns that version's record (None if it is gone again) and the head as left.

    Raises:
        CheckpointCorruptedError: the record or the head does not decode.
        CheckpointConflictError, UnavailableError: as ``advance_head``.
    """
    version = head.next_version
    entry = await store.entry(tk.record(version))
    if entry is None:  # deleted since (a thread delete): the head tells the rest
        return None, await store.read_head(tk)
    record = store.decode_record(tk, version, entry.value)
    return record, await advance_head(store, tk, record, head)


def version_keys(tk: ThreadKeys, record: Checkpoint) -> list[str]:
    """``record``'s own keys: the record, its id index, its object index (if any)."""
    keys = [tk.record(record.version), tk.index(record.checkpoint_id)]
    if record.data_ref is not None:
        keys.append(tk.blob_index(record.data_ref.name))
    return keys


async def _discard(kv: KeyValue, keys: Sequence[str]) -> None:
    """Purge a record that is no longer a version of the thread, with its indexes."""
    for key in keys:
        await kv.purge(key)
