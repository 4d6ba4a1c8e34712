"""One-shot reads of a whole KV bucket (or the keys under a filter), decoded.

One ephemeral consumer delivering the latest value of every key, not ``keys()`` plus a
get per key: ``keys()`` can end early under concurrent writes (nats.py #995) and
costs a request per key.
``scan`` reads a bounded page from a revision on (listings, sweeps of big buckets).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

S = TypeVar("S", bound=msgspec.Struct)
_MARKER = "Nats-Marker-Reason"
"""Header of a server-placed marker (a TTL expiry), not a value."""


async def replay(
    kv: KeyValue,
    type_: type[S],
    *,
    keys: str = ">",
    on_bad: Callable[[str], None] | None = None,
    timeout_s: float = 5.0,
) -> dict[str, S]:
    """Every current entry of ``kv`` under ``keys`` decoded as ``type_``, by key (sorted).

    Deleted and purged keys are absent. An entry that does not decode is skipped and
    its key passed to ``on_bad`` (if given). Read through an ephemeral pull consumer
    delivering the last message per key: its pending count, fixed when it is made,
    says how many to read. (nats-py's ``watch`` can signal the end of its replay
    before the entries it already received: a whole bucket then read as empty.)

    Raises:
        nats.errors.Error, TimeoutError: the bus failed, or entries still pending
            were not delivered within ``timeout_s`` (a partial read is never returned).
    """
    js: JetStreamContext = kv._js
    stream, prefix = kv._stream, kv._pre
    name = f"replay-{uuid.uuid4().hex}"
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            filter_subject=f"{prefix}{keys}",
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(timeout_s * 2, 10.0),
            mem_storage=True,
            num_replicas=1,
        ),
    )
    decoder = msgspec.json.Decoder(type_)
    found: dict[str, S] = {}
    pending = info.num_pending or 0
    received = 0
    try:
        sub = await js.pull_subscribe_bind(name, stream=stream)
        while pending:
            try:
                msgs = await sub.fetch(min(pending, 256), timeout=timeout_s)
            except TimeoutError:
                # What was pending may be gone (deleted, expired): then the read is
                # complete. If the consumer still holds some, or delivered some that
                # never reached us (a fetch that timed out), it is not: say so.
                state = await js.consumer_info(stream, name)
                left = state.num_pending or 0
                if left or (state.delivered.consumer_seq or 0) > received:
                    raise TimeoutError(
                        f"replay of {stream}: entries not read within {timeout_s} s"
                    ) from None
                break
            received += len(msgs)
            for msg in msgs:
                pending = msg.metadata.num_pending
                headers = msg.headers or {}
                if not msg.data or headers.get("KV-Operation") or headers.get(_MARKER):
                    continue
                key = msg.subject[len(prefix) :]
                try:
                    found[key] = decoder.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    if on_bad is not None:
                        on_bad(key)
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await js.delete_consumer(stream, name)
    return dict(sorted(found.items()))


@dataclass(frozen=True, slots=True)
class ScanPage(Generic[S]):
    """One bounded page of a bucket read in write order (``scan``).

    Attributes:
        entries: ``(key, revision, value)`` of the entries kept, in revision order.
        after: pass as ``after`` to read the next page; None: the end was reached.
        scanned: entries read (kept or not, markers included).
    """

    entries: list[tuple[str, int, S]]
    after: int | None
    scanned: int


async def scan(
    js: JetStreamContext,
    bucket: str,
    type_: type[S],
    *,
    after: int = 0,
    keep: Callable[[S], bool] | None = None,
    limit: int = 100,
    max_entries: int = 10_000,
    batch: int = 256,
    timeout_s: float = 5.0,
    on_bad: Callable[[str], None] | None = None,
) -> ScanPage[S]:
    """The current entries of ``bucket`` written after revision ``after``, bounded.

    The replay of ``replay`` from a revision on: an ephemeral pull consumer on the
    bucket's stream from sequence ``after + 1`` delivers each key's latest value
    (once per key in a bucket of history 1; older revisions too otherwise) in the
    order they were written. Reading stops once ``limit`` entries were kept (those
    ``keep`` accepts; all without it), ``max_entries`` were read, or the end; the
    page's ``after`` resumes there. An entry written again meanwhile moves to the end
    (it may show up on a later page too). Deletes, purges and entries that do not
    decode (passed to ``on_bad``) are skipped.

    Raises:
        nats.js.errors.NotFoundError: the bucket does not exist.
        nats.errors.Error, TimeoutError: the bus failed.
    """
    stream = f"KV_{bucket}"
    state = (await js.stream_info(stream)).state
    if state.messages == 0 or after >= state.last_seq:
        return ScanPage([], None, 0)
    prefix = f"$KV.{bucket}."
    name = f"scan-{uuid.uuid4().hex}"
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            filter_subject=f"{prefix}>",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(timeout_s * 2, 10.0),
            mem_storage=True,
            num_replicas=1,
        ),
    )
    decoder = msgspec.json.Decoder(type_)
    kept: list[tuple[str, int, S]] = []
    scanned, last, pending = 0, after, info.num_pending or 0
    try:
        sub = await js.pull_subscribe_bind(name, stream=stream)
        while pending and len(kept) < limit and scanned < max_entries:
            try:
                msgs = await sub.fetch(min(batch, max_entries - scanned), timeout=timeout_s)
            except TimeoutError:  # what was pending is gone (deleted, expired)
                pending = 0
                break
            for msg in msgs:
                meta = msg.metadata
                scanned, last, pending = scanned + 1, meta.sequence.stream, meta.num_pending
                headers = msg.headers or {}
                if msg.data and not headers.get("KV-Operation") and not headers.get(_MARKER):
                    key = msg.subject[len(prefix) :]
                    try:
                        value = decoder.decode(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        if on_bad is not None:
                            on_bad(key)
                    else:
                        if keep is None or keep(value):
                            kept.append((key, last, value))
                if len(kept) >= limit or scanned >= max_entries:
                    break
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await js.delete_consumer(stream, name)
    return ScanPage(kept, last if pending else None, scanned)
