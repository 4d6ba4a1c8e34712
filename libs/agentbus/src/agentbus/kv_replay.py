"""One-shot reads of a whole KV bucket (or the keys under a filter), decoded.

A watch replay, not ``keys()`` plus a get per key: ``keys()`` can end early under
concurrent writes (nats.py #995) and costs a request per key; the replay is one
ordered consumer that delivers the latest value of every key, then ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.js.kv import KeyValue

S = TypeVar("S", bound=msgspec.Struct)


async def replay(
    kv: KeyValue,
    type_: type[S],
    *,
    keys: str = ">",
    on_bad: Callable[[str], None] | None = None,
) -> dict[str, S]:
    """Every current entry of ``kv`` under ``keys`` decoded as ``type_``, by key (sorted).

    Deleted and purged keys are absent. An entry that does not decode is skipped and
    its key passed to ``on_bad`` (if given).
    """
    decoder = msgspec.json.Decoder(type_)
    found: dict[str, S] = {}
    watcher = await kv.watch(keys, ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:  # the replay is complete
                break
            if entry.operation is None and entry.value:
                try:
                    found[entry.key] = decoder.decode(entry.value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    if on_bad is not None:
                        on_bad(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return dict(sorted(found.items()))
