"""An in-memory copy of one KV bucket, kept current by a watcher (scheduler fleet state)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
from loguru import logger

from agentbus.bus import Bus
from agentbus.service import ServiceMetrics, report_bad_message

T = TypeVar("T", bound=msgspec.Struct)


class KvMirror(Generic[T]):
    """An in-memory copy of one KV bucket, kept current by a watcher.

    Entries are applied only if their revision is newer than the one known for the
    key, so the owner can apply its own writes at once without a stale watch update
    undoing them. ``ready`` is set after the initial replay.
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        type_: type[T],
        service_metrics: ServiceMetrics,
        *,
        on_change: Callable[[], None],
        significant: Callable[[T | None, T | None], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self.values: dict[str, T] = {}
        self.ready = asyncio.Event()
        self._revisions: dict[str, int] = {}
        self._decoder = msgspec.json.Decoder(type_)
        self._service_metrics = service_metrics
        self._on_change = on_change
        self._significant = significant or (lambda old, new: old != new)

    def apply(self, key: str, revision: int, value: T | None) -> bool:
        """Apply a put (``value``) or delete (None) at ``revision``; True if significant."""
        if revision <= self._revisions.get(key, 0):
            return False
        self._revisions[key] = revision
        old = self.values.get(key)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return self._significant(old, value)

    def revision(self, key: str) -> int:
        """The last revision seen for ``key`` (a delete marker's too); 0 if never seen."""
        return self._revisions.get(key, 0)

    def forget(self, key: str) -> None:
        """Drop ``key`` after the owner deleted it (the delete's revision is unknown)."""
        self.values.pop(key, None)

    async def run(self) -> None:
        """Follow the bucket until cancelled; re-watches after an error."""
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (task := asyncio.current_task()) and task.cancelling():
                    # Python 3.11's wait_for inside nats-py can turn our cancel into an error.
                    raise asyncio.CancelledError from exc
                logger.warning("kv watch failed", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        kv = await self.bus.kv(self.bucket)
        watcher = await kv.watchall()
        seen: set[str] | None = set()  # keys of the initial replay; None once live
        try:
            async for entry in watcher:
                if entry is None:
                    if seen is not None:
                        for key in [k for k in self.values if k not in seen]:
                            self.values.pop(key, None)  # deleted while we were not watching
                        seen = None
                    self.ready.set()
                    self._on_change()
                    continue
                if seen is not None:
                    seen.add(entry.key)
                value: T | None = None
                if entry.operation is None and entry.value:
                    try:
                        value = self._decoder.decode(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await report_bad_message(
                            self.bus,
                            self._service_metrics,
                            source=self.bucket,
                            subject=entry.key,
                            reason=f"KV entry does not decode: {exc}",
                        )
                if self.apply(entry.key, entry.revision or 0, value) and seen is None:
                    self._on_change()
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:
                logger.debug("kv watcher stop failed", bucket=self.bucket, error=repr(exc))
