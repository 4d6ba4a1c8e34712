"""Whether an agent report may touch its task: the subject names the reporter.

Agents report on ``<p>.results.<capability>.<agent_id>`` with their own id, which
NATS permissions can enforce (an agent may publish only on its own id). JetStream
does not tell the scheduler which agent pulled a task, so the scheduler checks what
it can see (``docs/decisions/0004-result-attribution.md``) and refuses a report:

- ``subject``: the subject is not ``<p>.results.<capability>.<agent_id>``;
- ``agent``: the payload's ``agent_id`` is not the subject's;
- ``capability``: the subject's capability is not the task record's.

Attempt numbers are not checked against the agents that started them: they are
JetStream delivery counts, which a server crash can repeat (its consumer state is
flushed, not written per delivery), and refusing the result of such a repeat stranded
the task; an agent could pick another number anyway.

A refused report is acked (it leaves the stream, never retried), logged with its
subject, task id and claimed agent, counted in
``agentbus_scheduler_reports_refused_total{reason}`` and published as an
``ErrorEvent`` on ``<p>.events.error.scheduler``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loguru import logger
from nats.aio.msg import Msg

from agentbus.messages import ErrorEvent, TaskRecord, utcnow
from agentbus.names import Names
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.lifecycle import Report

RefusalReason = Literal["subject", "agent", "capability"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a report is refused.

    Attributes:
        reason: the metric label (``subject``, ``agent``, ``capability``).
        detail: one line for the log and the ``ErrorEvent``.
    """

    reason: RefusalReason
    detail: str


def reporter(names: Names, subject: str) -> tuple[str, str] | None:
    """``(capability, agent_id)`` of a report subject, None if it is not one."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[0] != names.prefix or tokens[1] != "results":
        return None
    return tokens[2], tokens[3]


def check_reporter(names: Names, subject: str, report: Report) -> Refusal | None:
    """Refusal of ``report`` by its subject alone (before any record is read)."""
    found = reporter(names, subject)
    if found is None:
        return Refusal("subject", f"not a {names.prefix}.results.<capability>.<agent_id> subject")
    if found[1] != report.agent_id:
        return Refusal("agent", f"agent_id {report.agent_id!r} reported on {found[1]!r}'s subject")
    return None


def check_record(record: TaskRecord, report: Report, capability: str) -> Refusal | None:
    """Refusal of ``report`` (received for ``capability``) against the task's record."""
    if capability != record.capability:
        return Refusal(
            "capability", f"report for {capability!r}, the task is for {record.capability!r}"
        )
    return None


async def refuse(ctx: SchedulerContext, msg: Msg, report: Report, refusal: Refusal) -> None:
    """Ack ``msg`` as refused: logged, counted and published as an ``ErrorEvent``.

    The event is best effort (a bus outage must not stop the results); the ack is not.

    Raises:
        nats.errors.Error: the ack did not reach the server (the report comes back
            after the AckWait and is refused again).
    """
    ctx.metrics.reports_refused.labels(refusal.reason).inc()
    logger.warning(
        "report refused",
        reason=refusal.reason,
        detail=refusal.detail,
        subject=msg.subject,
        task_id=report.task_id,
        agent_id=report.agent_id,
        attempt=report.attempt,
    )
    text = f"report of task {report.task_id!r} by {report.agent_id!r} refused: {refusal.detail}"
    event = ErrorEvent(service="scheduler", subject=msg.subject, reason=text, at=utcnow())
    try:
        await ctx.bus.publish_event("error", "scheduler", event)
    except Exception as exc:
        logger.warning("could not publish error event", error=repr(exc))
    await msg.ack()
