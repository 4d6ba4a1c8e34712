"""A local mirror of one KV bucket, kept current by a watch that starts over when broken.

nats-py's KV watch is an ordered push consumer. After a nats-server restart its
consumer is gone; nats-py notices only after missed idle heartbeats and then
re-creates it once in the background, and an error while (re)creating it ends the
watch silently. A supervisor that stops seeing placements stops converging, so
``KvMirror`` owns the watch's life:

- it (re)starts the watch after any error, after the connection reconnected
  (``nc.stats["reconnects"]`` changed: a new server or a restarted one), and when
  the watcher ends, with capped exponential backoff between failed attempts;
- every (re)start replays the bucket and *replaces* the mirror with the replay, so
  keys deleted while the watch was down disappear too;
- it ends on ``stop`` (an event), never by cancellation alone: nats-py can turn a
  cancellation inside a request into a ``TimeoutError`` (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.messages import Backoff
from agentbus.retry import backoff_s

T = TypeVar("T")
_RETRY = Backoff(initial_s=0.2, factor=2.0, max_s=5.0, jitter=0.5)
BadEntry = Callable[[str, str], Awaitable[None]]
"""Called with (key, reason) for an entry that does not decode; it is skipped."""


class KvMirror(Generic[T]):
    """The decoded entries of one bucket, with when each was last written.

    Attributes:
        bucket: the KV bucket name.
        values: key to decoded value (deleted and purged keys are absent).
        seen_at: key to the monotonic time its current value arrived (for the
            replay after a (re)start: the time of that replay).
        ready: set once the first replay is complete.
        live: the watch is running and its replay is complete.
        synced_at: monotonic time the current watch finished its replay.
        restarts: how many times the watch was started again.
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        decode: Callable[[bytes], T],
        *,
        on_change: Callable[[], None] | None = None,
        on_bad: BadEntry | None = None,
        on_restart: Callable[[], None] | None = None,
        check_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self._decode = decode
        self._on_change = on_change or (lambda: None)
        self._on_bad = on_bad
        self._on_restart = on_restart or (lambda: None)
        self.check_s = check_s
        self.values: dict[str, T] = {}
        self.seen_at: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.live = False
        self.synced_at = 0.0
        self.restarts = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror the bucket until ``stop`` is set."""
        failures = 0
        first = True
        while not stop.is_set():
            if not first:
                self.restarts += 1
                self._on_restart()
            first = False
            try:
                await self._watch_once(stop)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                failures += 1
                logger.warning("KV watch broken; watching again", bucket=self.bucket,
                               error=repr(exc), attempt=failures)  # fmt: skip
            finally:
                self.live = False
            if failures and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s(_RETRY, failures))

    async def _watch_once(self, stop: asyncio.Event) -> None:
        """One watch: replay into a fresh mirror, then apply updates until it breaks."""
        reconnects = self.bus.nc.stats["reconnects"]
        kv: KeyValue = await self.bus.kv(self.bucket)
        watcher = await kv.watchall()
        replay: dict[str, T] | None = {}
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=self.check_s)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    if self.bus.nc.stats["reconnects"] != reconnects:
                        logger.info("NATS reconnected; watching again", bucket=self.bucket)
                        return
                    continue
                if entry is None:  # end of the replay
                    if replay is not None:
                        self._replace(replay)
                        replay = None
                    continue
                if entry is KeyValue.KeyWatcher.STOP_ITER:
                    return  # the watcher was stopped under us
                value = await self._value(entry.key, entry)
                if replay is not None:
                    if value is None:
                        replay.pop(entry.key, None)
                    else:
                        replay[entry.key] = value
                    continue
                if value is None:
                    self.values.pop(entry.key, None)
                    self.seen_at.pop(entry.key, None)
                else:
                    self.values[entry.key] = value
                    self.seen_at[entry.key] = time.monotonic()
                self._on_change()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _value(self, key: str, entry: KeyValue.Entry) -> T | None:
        """The decoded value of ``entry``; None for a delete, purge or bad entry."""
        if entry.operation in ("DEL", "PURGE"):
            return None
        try:
            return self._decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if self._on_bad is not None:
                await self._on_bad(key, str(exc))
            return None

    def _replace(self, replay: dict[str, T]) -> None:
        now = time.monotonic()
        self.values = replay
        self.seen_at = dict.fromkeys(replay, now)
        self.synced_at = now
        self.live = True
        self.ready.set()
        self._on_change()
