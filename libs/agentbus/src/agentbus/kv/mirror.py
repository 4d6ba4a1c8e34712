"""A local mirror of one KV bucket, kept current by a watch that starts over when broken.

The scheduler mirrors its fleet state (deployments, nodes, placements) and the
supervisor the buckets it reconciles from (deployments, placements, agent
heartbeats) through ``KvMirror``; the registry its agent and node heartbeats.

nats-py's KV watch is an ordered push consumer. After a nats-server restart its
consumer is gone; nats-py notices only after missed idle heartbeats and then
re-creates it once in the background, and an error while (re)creating it ends the
watch silently. A service that stops seeing changes stops converging, so
``KvMirror`` owns the watch's life:

- it (re)starts the watch after any error, after the connection reconnected
  (``nc.stats["reconnects"]`` changed), when the watcher ends, and when it stopped
  delivering (``agentbus.kv.liveness``), with capped exponential backoff;
- every (re)start replays the bucket into a staging copy that *replaces* the mirror
  once the replay is complete: keys deleted, purged or expired while the watch was
  down disappear too, and readers never see a half-replayed mirror;
- live updates are applied as they arrive: a put sets the key, a delete or a purge
  (a per-message or bucket TTL expiry arrives as a purge) removes it. Each entry is
  applied only if its revision is newer than the one known for its key, so the
  owner of a bucket can apply its own writes at once (``apply``) without a late
  watch update undoing them;
- an entry that does not decode as the mirror's type, or that the owner's ``check``
  refuses, is skipped (its key is removed) and reported through
  ``agentbus.service.report_bad_message`` (log,
  ``agentbus_bad_messages_total{service, source}``, ``ErrorEvent``);
- ``on_change`` says *that* the mirror changed; ``on_entry`` says *how*, key by key
  (``KvChange``: old and new value, the operation that did it, a put, a delete, a
  purge or a key a replay no longer found, and whether a replay found it), which is
  what the registry needs to tell a graceful leave (delete) from a TTL expiry (purge);
- ``resync`` starts the watch over and returns once a replay begun after the call is
  complete (a fenced supervisor rejoining after a partition must not act on old state);
- it ends on ``stop`` (an event), never by cancellation alone: nats-py can turn a
  cancellation inside a request into a ``TimeoutError`` (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import msgspec
from loguru import logger
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.kv.changes import KvChange as KvChange  # re-exported
from agentbus.kv.changes import Operation
from agentbus.kv.liveness import WatchLiveness
from agentbus.messages import Backoff
from agentbus.retry import backoff_s
from agentbus.service import ServiceMetrics, report_bad_message

T = TypeVar("T", bound=msgspec.Struct)
_RETRY = Backoff(initial_s=0.2, factor=2.0, max_s=5.0, jitter=0.5)
"""Pause between failed watch attempts (``agentbus.retry.backoff_s``)."""


@dataclass(slots=True)
class _Seen(Generic[T]):
    """One entry as the watch delivered it (value None: a marker or a bad entry)."""

    revision: int
    value: T | None
    operation: Operation
    written_at: datetime


_MARKERS: dict[str, Operation] = {"DEL": "DEL", "PURGE": "PURGE"}
"""nats-py's ``Entry.operation`` of a marker (None for a put)."""
_Staged = dict[str, _Seen[T]]
"""A replay in progress: key to its newest entry."""


def _stage(staged: _Staged[T], key: str, seen: _Seen[T]) -> None:
    known = staged.get(key)
    if known is None or seen.revision > known.revision:
        staged[key] = seen


class KvMirror(Generic[T]):
    """The decoded entries of one bucket, their revisions and when each arrived.

    Attributes:
        bus: the connection the watch runs on.
        bucket: the KV bucket name.
        values: key to decoded value (deleted, purged, expired and undecodable keys
            are absent).
        seen_at: key to the monotonic time (s) its current value arrived; for the
            keys of a replay, the time the replay completed.
        written_at: key to the time (UTC) the server stored its current value (for
            ``apply``: the time of the call).
        ready: set once the first replay is complete.
        live: the watch is running and its replay is complete.
        synced_at: monotonic time (s) the current watch completed its replay.
        restarts: how many times the watch was started again.
        check_s: how often (s) an idle watch checks for a reconnect and for ``stop``.
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        type_: type[T],
        *,
        service_metrics: ServiceMetrics | None = None,
        source: str | None = None,
        on_change: Callable[[], None] | None = None,
        significant: Callable[[T | None, T | None], bool] | None = None,
        on_restart: Callable[[], None] | None = None,
        check: Callable[[str, T], str | None] | None = None,
        on_entry: Callable[[KvChange[T]], Awaitable[None]] | None = None,
        check_s: float = 1.0,
    ) -> None:
        """Mirror ``bucket`` (values decoded as ``type_``) once ``run`` runs.

        Args:
            bus: the connection.
            bucket: the KV bucket to mirror.
            type_: the Struct every value decodes as.
            service_metrics: where entries that do not decode are counted and
                reported (``report_bad_message``); None: they are only logged (debug).
            source: the ``source`` label of those reports (default: ``bucket``).
            on_change: called after each replay and after each significant live
                update (not after ``apply``: the owner knows its own writes).
            significant: ``(old, new) -> bool`` (None: absent); default ``old != new``.
            on_restart: called each time the watch is started again.
            check: ``(key, value) -> reason | None``: a value the decoder accepts
                but the owner refuses (a reason) is a bad entry too.
            on_entry: awaited for each key whose value changed (``old != new``) by a
                live update, or by a replay (after it replaced the mirror and
                ``on_change`` ran), in the watch's order (a replay's: by key); not
                after ``apply``. An error it raises is logged and the watch goes on.
            check_s: how often (s) an idle watch checks for a reconnect and ``stop``.
        """
        self.bus = bus
        self.bucket = bucket
        self.check_s = check_s
        self.values: dict[str, T] = {}
        self.seen_at: dict[str, float] = {}
        self.written_at: dict[str, datetime] = {}
        self.ready = asyncio.Event()
        self.live = False
        self.synced_at = 0.0
        self.restarts = 0
        self._decoder = msgspec.json.Decoder(type_)
        self._type_name = type_.__name__
        self._service_metrics = service_metrics
        self._source = source or bucket
        self._on_change = on_change or (lambda: None)
        self._significant = significant or (lambda old, new: old != new)
        self._on_restart = on_restart or (lambda: None)
        self._check = check
        self._on_entry = on_entry
        self._revisions: dict[str, int] = {}
        self._replay: _Staged[T] | None = None
        self._resync_asked = False
        self._resync_waiters: list[asyncio.Future[None]] = []  # answered by a replay

    # -- the owner's own writes ---------------------------------------------------------
    def apply(self, key: str, revision: int, value: T | None) -> bool:
        """Apply the owner's write of ``key``: a put (``value``) or a delete (None).

        Ignored if a revision of ``key`` newer than ``revision`` is known. Returns
        whether the change is significant (``on_change`` is not called).
        """
        seen = _Seen(revision, value, "PUT" if value is not None else "DEL", datetime.now(UTC))
        if self._replay is not None:
            _stage(self._replay, key, seen)
        change = self._apply(key, seen)
        return change is not None and self._significant(change.old, change.new)

    def revision(self, key: str) -> int:
        """The last revision known for ``key`` (a delete or purge marker's too); 0 if none.

        The ``last`` of a compare-and-set write (``kv.update(key, value, last=)``).
        """
        return self._revisions.get(key, 0)

    def forget(self, key: str) -> None:
        """Drop ``key`` after the owner deleted it without learning the delete's revision."""
        self.values.pop(key, None)
        self.seen_at.pop(key, None)
        self.written_at.pop(key, None)
        if self._replay is not None:
            self._replay.pop(key, None)

    async def resync(self) -> None:
        """Start the watch over; return once a replay begun after this call is complete.

        The running watch ends at its next check (within ``check_s``); ``run`` watches
        again and replays the bucket. Waits as long as that takes (a broken connection:
        until it is back); cancel the call to give up.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._resync_waiters.append(waiter)
        self._resync_asked = True
        try:
            await waiter
        finally:
            if waiter in self._resync_waiters:
                self._resync_waiters.remove(waiter)

    # -- the watch ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Mirror the bucket until ``stop`` is set (or the task is cancelled).

        A broken watch is logged and started again; nothing but ``CancelledError``
        leaves this method.
        """
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
                    # nats-py can turn our cancellation into another error
                    raise asyncio.CancelledError from exc
                failures += 1
                logger.warning(
                    "KV watch broken; watching again",
                    bucket=self.bucket,
                    error=repr(exc),
                    attempt=failures,
                )
            finally:
                self.live = False
            if failures and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s(_RETRY, failures))

    async def _watch_once(self, stop: asyncio.Event) -> None:
        """One watch: replay into a staging copy, then apply updates until it breaks."""
        nc = self.bus.nc
        reconnects = nc.stats["reconnects"]
        # Resync requests made before this watch began are answered by its replay.
        self._resync_asked = False
        answers, self._resync_waiters = self._resync_waiters, []
        try:
            kv = await self.bus.kv(self.bucket)
            watcher = await kv.watchall()
        except BaseException:
            self._resync_waiters.extend(answers)
            raise
        self._replay = {}
        liveness = WatchLiveness(self.bus, self.bucket)
        try:
            while not stop.is_set():
                if nc.stats["reconnects"] != reconnects:
                    logger.info("NATS reconnected; watching again", bucket=self.bucket)
                    return
                if self._resync_asked:
                    logger.info("resync asked; watching again", bucket=self.bucket)
                    return
                try:
                    entry = await watcher.updates(timeout=self.check_s)  # type: ignore[no-untyped-call]
                except TimeoutError:  # nats-py raises its own subclass
                    if await liveness.stale():
                        logger.warning(
                            "KV watch stopped delivering; watching again", bucket=self.bucket
                        )
                        return
                    continue
                if entry is None:  # the end of the replay
                    if self._replay is not None:
                        replay, self._replay = self._replay, None
                        changes = self._replace(replay)
                        for waiter in answers:
                            if not waiter.done():
                                waiter.set_result(None)
                        answers = []
                        for replayed in changes:
                            await self._notify(replayed)
                    continue
                if entry is KeyValue.KeyWatcher.STOP_ITER:
                    return  # the watcher was stopped under us
                liveness.saw(entry.revision)
                seen = await self._seen(entry)
                if self._replay is not None:
                    _stage(self._replay, entry.key, seen)
                elif (change := self._apply(entry.key, seen)) is not None:
                    if self._significant(change.old, change.new):
                        self._on_change()
                    await self._notify(change)
        finally:
            self._replay = None
            self._resync_waiters.extend(w for w in answers if not w.done())
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _seen(self, entry: KeyValue.Entry) -> _Seen[T]:
        """``entry`` decoded; its value None for a delete, a purge or a bad entry."""
        written: object = entry.created  # typed int by nats-py, a UTC datetime in fact
        written_at = written if isinstance(written, datetime) else datetime.now(UTC)
        operation: Operation = _MARKERS.get(entry.operation or "", "PUT")
        value = await self._decode(entry) if operation == "PUT" else None
        return _Seen(entry.revision or 0, value, operation, written_at)

    async def _decode(self, entry: KeyValue.Entry) -> T | None:
        """The decoded value of a put; None (reported) if it is a bad entry."""
        try:
            value = self._decoder.decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"KV entry does not decode as {self._type_name}: {exc}"
        else:
            refused = self._check(entry.key, value) if self._check is not None else None
            if refused is None:
                return value
            reason = refused
        subject = f"$KV.{self.bucket}.{entry.key}"
        if self._service_metrics is None:
            logger.debug("bad KV entry skipped", subject=subject, reason=reason)
        else:
            await report_bad_message(
                self.bus, self._service_metrics, source=self._source, subject=subject, reason=reason
            )
        return None

    def _apply(self, key: str, seen: _Seen[T]) -> KvChange[T] | None:
        """Apply a live entry; None if a newer revision of ``key`` is known."""
        if seen.revision <= self._revisions.get(key, 0):
            return None
        self._revisions[key] = seen.revision
        old = self.values.get(key)
        if seen.value is None:
            self.values.pop(key, None)
            self.seen_at.pop(key, None)
            self.written_at.pop(key, None)
        else:
            self.values[key] = seen.value
            self.seen_at[key] = time.monotonic()
            self.written_at[key] = seen.written_at
        return KvChange(key, old, seen.value, seen.operation, seen.revision, replayed=False)

    def _replace(self, replay: _Staged[T]) -> list[KvChange[T]]:
        """Make the completed ``replay`` the mirror; the keys whose value it changed."""
        now = time.monotonic()
        old = self.values
        self._revisions = {key: seen.revision for key, seen in replay.items()}
        self.values = {key: seen.value for key, seen in replay.items() if seen.value is not None}
        self.written_at = {key: replay[key].written_at for key in self.values}
        self.seen_at = dict.fromkeys(self.values, now)
        self.synced_at = now
        self.live = True
        self.ready.set()
        self._on_change()
        changes = []
        for key in sorted(old.keys() | self.values.keys()):
            before, after = old.get(key), self.values.get(key)
            if before != after:
                seen = replay.get(key)
                operation: Operation = "ABSENT" if seen is None else seen.operation
                revision = 0 if seen is None else seen.revision
                changes.append(KvChange(key, before, after, operation, revision, replayed=True))
        return changes

    async def _notify(self, change: KvChange[T]) -> None:
        """Await ``on_entry`` for a real change; log (not raise) what it raises."""
        if self._on_entry is None or change.old == change.new:
            return
        try:
            await self._on_entry(change)
        except Exception as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc
            logger.opt(exception=exc).warning(
                "KV change callback failed", bucket=self.bucket, key=change.key
            )
