"""Singleton duties of the scheduler: dead-letter moves and work-stream sweeps.

Several scheduler instances may run; these duties run only in the one holding the KV
lease ``scheduler-sweeps`` (``agentbus.kv.lease.KvLease``). A crashed holder's lease
expires after ``sweep_lease_ttl_s`` and another instance takes over; a clean stop
releases it at once.

While holding the lease, the instance

1. moves the messages named by MAX_DELIVERIES advisories to the dead letters
   (``DeadLetters.drain_advisories``, reacting as advisories arrive), and
2. every ``sweep_interval_s`` scans the work stream ``<P>_TASKS`` (it holds exactly
   the tasks not yet ended: queued, waiting for a retry, or running), at most
   ``sweep_max_messages`` per sweep, going on from there next time. For each message:

   - its task's ``deadline`` has passed and the record is ``queued`` (never started,
     or waiting for a retry): the record ends ``expired`` and the message is deleted,
     so the task never starts. A running task is left to finish;
   - it was delivered (its sequence is at or below the consumer's last delivered
     one) and its record has ended: a leftover, deleted;
   - it was delivered, its record shows as many attempts as the consumer's
     ``max_deliver``, and its subject holds more messages than the consumer has
     pending or in flight: stuck after its last delivery (the advisory was lost, e.g.
     sent before ``<P>_TASK_ADVISORIES`` existed), moved to the dead letters. This
     backstop needs the attempts in the record (``TaskStarted`` reports); the
     advisory stream covers the rest.

   Messages not yet delivered and without a passed deadline cost no record read.

3. sets ``agentbus_scheduler_tasks_unserved`` and warns of tasks waiting for a
   capability no live agent serves (``unserved.Unserved``), from the same counts;
4. after each sweep, heals ``queued`` records whose message never reached the work
   stream (``heal.Healer``).
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.js.errors
from loguru import logger
from nats.js.api import ConsumerInfo, RawStreamMsg

from agentbus.kv.lease import KvLease
from agentbus.messages import ErrorInfo, decode_task, utcnow
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.deadletters import DeadLetters
from agentbus_scheduler.tasks.heal import Healer
from agentbus_scheduler.tasks.lifecycle import end_task
from agentbus_scheduler.tasks.unserved import LiveAgents, Unserved

SWEEPS_LEASE = "scheduler-sweeps"
"""Name of the lease (key in KV ``<p>_leases``) that gates the sweeps."""


class Sweeper:
    """Runs the singleton duties while this instance holds ``SWEEPS_LEASE``."""

    def __init__(
        self, ctx: SchedulerContext, *, dead_letters: DeadLetters, agents: LiveAgents
    ) -> None:
        self.ctx = ctx
        self.dead_letters = dead_letters
        self.unserved = Unserved(ctx, agents)
        settings = ctx.settings
        self.lease = KvLease(
            ctx.bus, SWEEPS_LEASE, holder=settings.instance_id, ttl_s=settings.sweep_lease_ttl_s
        )
        self.healer = Healer(ctx, dead_letters.admission)
        self._cursor = 0
        self._stuck: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease and do the duties while held, until ``stop`` is set."""
        lease = asyncio.create_task(self.lease.run(stop), name="scheduler sweeps lease")
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        try:
            while not stop.is_set():
                held = self.lease.held
                self.ctx.metrics.sweep_lease_held.set(1 if held else 0)
                if not held:
                    self.unserved.clear()
                    await self._pause(stop, 1.0)
                    next_sweep = 0.0
                    continue
                try:
                    await self.dead_letters.drain_advisories(self.lease, wait_s=0.5)
                    if loop.time() >= next_sweep:
                        next_sweep = loop.time() + self.ctx.settings.sweep_interval_s
                        await self.sweep_once()
                        await self.healer.heal_once(self.lease)
                except Exception:  # bus trouble: the next round tries again
                    logger.opt(exception=True).warning("sweep round failed")
                    await self._pause(stop, 1.0)
        finally:
            self.ctx.metrics.sweep_lease_held.set(0)
            self.unserved.clear()
            await asyncio.gather(lease, return_exceptions=True)

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait ``seconds``, less if stopped or the lease changes hands."""
        waits = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.lease.changed.wait()),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def sweep_once(self) -> int:
        """Scan up to ``sweep_max_messages`` work-stream messages; how many were read."""
        names, js = self.ctx.bus.names, self.ctx.bus.js
        self.ctx.metrics.sweeps.inc()
        state = (await js.stream_info(names.tasks_stream)).state
        if state.messages == 0:
            self._cursor = 0
            await self.unserved.check({})
            return 0
        consumers = {
            c.config.filter_subject: c
            for c in await js.consumers_info(names.tasks_stream)
            if c.config.filter_subject
        }
        # A subject holding more messages than its consumer has pending or in flight
        # holds a message that consumer is done with: stuck after max_deliver.
        per_subject = (
            await js.stream_info(names.tasks_stream, subjects_filter=names.tasks_all())
        ).state.subjects or {}
        await self.unserved.check(per_subject)
        self._stuck = {
            subject
            for subject, c in consumers.items()
            if per_subject.get(subject, 0) > (c.num_pending or 0) + (c.num_ack_pending or 0)
        }
        seq = max(self._cursor, state.first_seq)
        scanned = 0
        while scanned < self.ctx.settings.sweep_max_messages and seq <= state.last_seq:
            if not self.lease.held:
                return scanned
            try:
                raw = await js.get_msg(
                    names.tasks_stream, seq=seq, next=True, subject=names.tasks_all()
                )
            except nats.js.errors.NotFoundError:
                break
            if raw.seq is None:
                break
            seq = raw.seq + 1
            scanned += 1
            await self._check(raw, consumers)
        self._cursor = seq if seq <= state.last_seq else 0
        return scanned

    async def _check(self, raw: RawStreamMsg, consumers: dict[str, ConsumerInfo]) -> None:
        assert raw.seq is not None
        try:
            task = decode_task(raw.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # poison: the agent it is delivered to terminates and reports it
        now = utcnow()
        consumer = consumers.get(raw.subject or "")
        delivered = (
            consumer is not None
            and consumer.delivered is not None
            and consumer.delivered.stream_seq is not None
            and raw.seq <= consumer.delivered.stream_seq
        )
        past_deadline = task.deadline is not None and task.deadline <= now
        if not delivered and not past_deadline:
            return
        found = await self.ctx.records.read(task.task_id)
        if found is None:
            return
        record = found[0]
        if record.terminal:
            await self.dead_letters.delete(raw.seq, reason="finished")
            return
        if past_deadline and record.status == "queued":
            reason = "deadline passed while queued"
            error = ErrorInfo(
                error_type="DeadlineExceeded",
                message=f"deadline {task.deadline} passed before the task started",
            )
            outcome = await self.ctx.records.update(
                task.task_id,
                lambda r: end_task(
                    r, "expired", now=now, error=error, reason=reason, unless_running=True
                ),
            )
            if outcome.record is not None and outcome.record.terminal:
                await self.dead_letters.delete(raw.seq, reason="expired")
            return
        max_deliver = consumer.config.max_deliver if consumer is not None else None
        attempts = max((a.number for a in record.attempts), default=0)
        if (
            delivered
            and raw.subject in self._stuck
            and max_deliver is not None
            and 0 < max_deliver <= attempts
        ):
            reason = f"delivered {attempts} times (max_deliver) without a result; found by a sweep"
            await self.dead_letters.bury(raw.seq, reason=reason, source="sweep")
