"""Tasks that no live agent serves: the agents mirror, the gauge and the warning event.

Every scheduler instance mirrors KV ``<p>_agents`` (``LiveAgents``, a
``agentbus.kv.mirror.KvMirror``): an agent is live while its heartbeat entry is there
(the entries expire by TTL). Admission uses it for ``SubmitTask.require_agent``.

The ``scheduler-sweeps`` lease holder, on each sweep (``Unserved.check``), from the
per-subject message counts of the work stream:

- sets ``agentbus_scheduler_tasks_unserved{capability}``: messages waiting on the
  subjects of each capability that no live agent serves (queued tasks; a task whose
  agent was just lost counts too until the record says otherwise);
- publishes one ``TaskEvent`` per such task waiting longer than ``unserved_warn_s``
  on ``<p>.events.task.unserved.<task_id>``: ``status`` ``queued`` (the record's, not
  changed) and ``reason`` naming the capability. "Once" survives a restart or a lease
  hand-over: an event already on that subject is not published again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.errors import UnavailableError
from agentbus.kv.mirror import KvMirror
from agentbus.messages import AgentInfo, TaskEvent, decode_task, encode, utcnow
from agentbus_scheduler.context import SchedulerContext

UNSERVED = "unserved"
"""Kind of the warning event: ``<p>.events.task.unserved.<task_id>``."""
MAX_READ_PER_SUBJECT = 1000
"""Work-stream messages read per subject and sweep to find tasks waiting too long."""
MAX_WARNED = 100_000
"""Task ids remembered as warned (the events stream remembers the rest)."""


class LiveAgents:
    """The live agents (KV ``<p>_agents`` mirrored) and the capabilities they serve."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        self.mirror = KvMirror(
            ctx.bus,
            ctx.bus.names.agents_bucket,
            AgentInfo,
            service_metrics=ctx.service_metrics,
            source="agents",
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start mirroring."""
        self._task = asyncio.create_task(self.mirror.run(self._stop), name="mirror agents")

    async def close(self) -> None:
        """Stop mirroring."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def capabilities(self) -> set[str]:
        """Capabilities some live agent serves (empty until the first replay)."""
        return {c for agent in self.mirror.values.values() for c in agent.capabilities}

    async def serves(self, capability: str) -> bool:
        """Whether a live agent serves ``capability``.

        Raises:
            UnavailableError: the agents bucket was not read within ``ready_timeout_s``.
        """
        try:
            async with asyncio.timeout(self.ctx.settings.ready_timeout_s):
                await self.mirror.ready.wait()
        except TimeoutError:
            raise UnavailableError("the scheduler has not read the live agents yet") from None
        return capability in self.capabilities()


def capability_of(prefix: str, subject: str) -> str:
    """The capability of work-stream subject ``<p>.tasks.<capability>[.p<N>]``."""
    return subject[len(prefix) + len(".tasks.") :].split(".", 1)[0]


class Unserved:
    """The gauge and warning events of tasks no live agent serves (lease holder only)."""

    def __init__(self, ctx: SchedulerContext, agents: LiveAgents) -> None:
        self.ctx = ctx
        self.agents = agents
        self._warned: set[str] = set()
        self._next_seq: dict[str, int] = {}  # subject -> first sequence not yet looked at

    def clear(self) -> None:
        """Drop the gauge's values (this instance stopped sweeping)."""
        self.ctx.metrics.unserved.clear()
        self._next_seq.clear()

    async def check(self, per_subject: dict[str, int]) -> int:
        """Set the gauge from ``per_subject`` counts, warn of long waits; warnings sent.

        Does nothing until the agents mirror has its first replay.
        """
        if not self.agents.mirror.ready.is_set():
            return 0
        prefix = self.ctx.bus.names.prefix
        served = self.agents.capabilities()
        waiting: dict[str, int] = {}
        subjects: list[str] = []
        for subject, count in per_subject.items():
            capability = capability_of(prefix, subject)
            if count and capability not in served:
                waiting[capability] = waiting.get(capability, 0) + count
                subjects.append(subject)
        gauge = self.ctx.metrics.unserved
        gauge.clear()
        for capability, count in waiting.items():
            gauge.labels(capability).set(count)
        if len(self._warned) > MAX_WARNED:
            self._warned.clear()
        self._next_seq = {s: n for s, n in self._next_seq.items() if s in subjects}
        sent = 0
        for subject in subjects:
            sent += await self._warn_on(subject)
        return sent

    async def _warn_on(self, subject: str) -> int:
        """Warn of the tasks on ``subject`` (oldest first) waiting too long; how many.

        Goes on from the first message not looked at on an earlier sweep.
        """
        bus = self.ctx.bus
        warn_s = self.ctx.settings.unserved_warn_s
        before = utcnow() - timedelta(seconds=warn_s)
        seq, sent = self._next_seq.get(subject, 1), 0
        for _ in range(MAX_READ_PER_SUBJECT):
            try:
                raw = await bus.js.get_msg(
                    bus.names.tasks_stream, seq=seq, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                break
            if raw.seq is None or raw.time is None or raw.time > before:
                break  # the rest arrived later
            seq = self._next_seq[subject] = raw.seq + 1
            try:
                task = decode_task(raw.data or b"")
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # poison: the agent it reaches terminates and reports it
            if task.task_id in self._warned:
                continue
            self._warned.add(task.task_id)
            if await self._warned_before(task.task_id):
                continue
            found = await self.ctx.records.read(task.task_id)
            if found is None or found[0].status != "queued":
                continue
            waited_s = (utcnow() - found[0].created_at).total_seconds()
            reason = (
                f"unserved: no live agent serves capability {task.capability!r}; "
                f"queued for {waited_s:.0f} s"
            )
            event = TaskEvent(
                task_id=task.task_id,
                capability=task.capability,
                status="queued",
                at=utcnow(),
                reason=reason,
            )
            await bus.js.publish(
                bus.names.task_event_subject(UNSERVED, task.task_id), encode(event)
            )
            self.ctx.metrics.unserved_warnings.inc()
            logger.warning(
                "task waits for an agent",
                task_id=task.task_id,
                capability=task.capability,
                waited_s=round(waited_s),
            )
            sent += 1
        return sent

    async def _warned_before(self, task_id: str) -> bool:
        subject = self.ctx.bus.names.task_event_subject(UNSERVED, task_id)
        try:
            await self.ctx.bus.js.get_last_msg(self.ctx.bus.names.events_stream, subject)
        except nats.js.errors.NotFoundError:
            return False
        except nats.errors.Error:
            return False
        return True
