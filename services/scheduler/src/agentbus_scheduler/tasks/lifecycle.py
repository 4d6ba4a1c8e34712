"""The task lifecycle as pure transitions of ``TaskRecord`` (no I/O).

::

    queued ──TaskStarted──▶ running ──TaskResult──▶ succeeded | failed | dead | expired
      ▲                        │                    | cancelled
      └── failed + retry_in_s ─┘   (the agent nak'd the task: another attempt follows)

    queued/running ──scheduler──▶ expired (deadline sweep) | dead (max deliveries)
    queued/running ──CancelTask──▶ cancelled

A terminal record never changes again: the first result wins, later ones are
duplicates. Attempts are keyed by their number (the delivery count); an attempt that
was running when a later one started, or when the task ended, is recorded ``lost``.

**The record numbers the attempts.** A delivery count can start over: a nats-server
killed with SIGKILL can lose its consumers' state, and a task running then comes
back as delivery 1. A report is one delivery's (its agent and ``started_at``; a
result also matches its agent's attempt recorded running); one whose number the
record already gives to another delivery is renumbered: the
number of its delivery if recorded, else the record's latest + 1
(``number_report``), so the history stays complete and increasing.

An agent reports ``TaskStarted`` only for a handler that runs longer than a short
delay (``AgentSettings.started_report_delay_s``): a ``TaskResult`` of an attempt the
record never showed running (``ran``, or ``succeeded``/``failed``) records the attempt
and emits the ``running`` event (at the attempt's ``started_at``) before its own, so
the history is the same as with both reports, for one record write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from agentbus.messages import (
    Attempt,
    ErrorInfo,
    TaskEvent,
    TaskRecord,
    TaskResult,
    TaskStarted,
    TaskStatus,
)

Report = TaskStarted | TaskResult
Change = tuple[TaskRecord | None, TaskEvent | None]
Changes = tuple[TaskRecord | None, TaskEvent | tuple[TaskEvent, ...] | None]

LOST = ErrorInfo(
    error_type="AttemptLost",
    message="no result: the agent was lost or its lease lapsed before it reported",
    retryable=True,
)
"""The error recorded on an attempt that ended without a result."""

AttemptStatus = Literal["running", "succeeded", "failed", "lost", "cancelled", "expired"]
_ATTEMPT_STATUS: dict[str, AttemptStatus] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "dead": "failed",  # the last attempt failed; the task is dead
    "expired": "failed",  # it failed, and a retry would start after the deadline
    "cancelled": "cancelled",
}


def next_status(result: TaskResult) -> TaskStatus:
    """The record status ``result`` leads to.

    ``failed`` with ``retry_in_s`` set means the agent returned the task for another
    attempt (nak with that delay): ``queued``. Every other status is final as reported
    (the agent decided with ``agentbus.retry.decide``).
    """
    if result.status == "failed" and result.retry_in_s is not None:
        return "queued"
    return result.status


def _with_attempt(attempts: Sequence[Attempt], attempt: Attempt) -> list[Attempt]:
    """``attempts`` with the entry of ``attempt.number`` replaced or appended, sorted."""
    others = [a for a in attempts if a.number != attempt.number]
    return sorted([*others, attempt], key=lambda a: a.number)


def lose_running(attempts: Sequence[Attempt], *, before: int | None = None) -> list[Attempt]:
    """``attempts`` with every ``running`` one numbered below ``before`` (all: None) lost."""
    return [
        msgspec.structs.replace(a, status="lost", error=a.error or LOST)
        if a.status == "running" and (before is None or a.number < before)
        else a
        for a in attempts
    ]


def _latest(record: TaskRecord) -> int:
    return max((a.number for a in record.attempts), default=0)


def _event(
    record: TaskRecord,
    status: TaskStatus,
    *,
    at: datetime,
    attempt: int,
    agent_id: str | None = None,
    error: ErrorInfo | None = None,
    next_attempt_at: datetime | None = None,
    reason: str = "",
) -> TaskEvent:
    """The ``TaskEvent`` of ``record`` reaching ``status``."""
    return TaskEvent(
        task_id=record.task_id,
        capability=record.capability,
        status=status,
        at=at,
        attempt=attempt,
        agent_id=agent_id,
        error=error,
        next_attempt_at=next_attempt_at,
        reason=reason,
    )


def _same_delivery(attempt: Attempt, report: Report) -> bool:
    """Whether ``report`` is of the delivery recorded as ``attempt``.

    Same agent and ``started_at``, or a result of that agent's attempt still running.
    """
    if attempt.agent_id != report.agent_id:
        return False
    running = isinstance(report, TaskResult) and attempt.status == "running"
    return running or attempt.started_at == report.started_at


def number_report(record: TaskRecord, report: Report) -> Report:
    """``report`` with the attempt number the record gives its delivery.

    Unchanged unless the record holds another delivery under the reported number
    (the delivery count started over); then the number of the recorded attempt with
    the same agent and ``started_at``, else the record's latest number + 1.
    """
    taken = next((a for a in record.attempts if a.number == report.attempt), None)
    if taken is None or _same_delivery(taken, report):
        return report
    same = next((a for a in record.attempts if _same_delivery(a, report)), None)
    number = same.number if same is not None else _latest(record) + 1
    return msgspec.structs.replace(report, attempt=number)


def apply_report(record: TaskRecord, report: Report, *, now: datetime) -> Changes:
    """The record after ``report`` and the events to emit; ``(None, None)`` if unchanged.

    A terminal record never changes (a late ``TaskStarted`` never moves it back to
    running; a second ``TaskResult`` is a duplicate). A retryable failure of an attempt
    that a later attempt has already replaced updates that attempt only. A result of
    an attempt that ran but was never recorded running also yields its ``running``
    event, first.
    """
    if record.terminal:
        return None, None
    report = number_report(record, report)
    if isinstance(report, TaskStarted):
        return _started(record, report, now=now)
    status = next_status(report)
    current = next((a for a in record.attempts if a.number == report.attempt), None)
    attempts = list(record.attempts)
    ran = report.ran or report.status in ("succeeded", "failed")
    if current is not None or ran:
        attempts = _with_attempt(
            attempts,
            Attempt(
                number=report.attempt,
                agent_id=report.agent_id,
                started_at=report.started_at,
                finished_at=report.finished_at,
                status=_ATTEMPT_STATUS[report.status],
                error=report.error,
            ),
        )
    if status == "queued" and report.attempt < _latest(record):
        return msgspec.structs.replace(record, attempts=attempts, updated_at=now), None
    terminal = status != "queued"
    attempts = lose_running(attempts, before=None if terminal else report.attempt)
    next_at = None
    if not terminal and report.retry_in_s is not None:
        next_at = report.finished_at + timedelta(seconds=report.retry_in_s)
    updated = msgspec.structs.replace(
        record,
        status=status,
        agent_id=report.agent_id,
        attempts=attempts,
        output=report.output,
        output_ref=report.output_ref,
        error=report.error,
        finished_at=report.finished_at if terminal else None,
        next_attempt_at=next_at,
        updated_at=now,
    )
    event = _event(
        record,
        status,
        at=now,
        attempt=report.attempt,
        agent_id=report.agent_id,
        error=report.error,
        next_attempt_at=next_at,
    )
    if current is None and ran:  # no TaskStarted was applied: the attempt starts here
        started = _event(
            record,
            "running",
            at=report.started_at,
            attempt=report.attempt,
            agent_id=report.agent_id,
        )
        return updated, (started, event)
    return updated, event


def _started(record: TaskRecord, report: TaskStarted, *, now: datetime) -> Change:
    current = next((a for a in record.attempts if a.number == report.attempt), None)
    if current is not None and (current.status != "running" or current.agent_id == report.agent_id):
        return None, None  # redelivered report, or a stale one for a finished attempt
    attempt = Attempt(number=report.attempt, agent_id=report.agent_id, started_at=report.started_at)
    updated = msgspec.structs.replace(
        record,
        status="running",
        agent_id=report.agent_id,
        attempts=lose_running(_with_attempt(record.attempts, attempt), before=report.attempt),
        next_attempt_at=None,
        updated_at=now,
    )
    return updated, _event(
        record, "running", at=now, attempt=report.attempt, agent_id=report.agent_id
    )


def end_task(
    record: TaskRecord,
    status: TaskStatus,
    *,
    now: datetime,
    error: ErrorInfo,
    reason: str,
    unless_running: bool = False,
) -> Change:
    """The scheduler itself ends a non-terminal task (sweeps, dead letters).

    Every running attempt is recorded ``lost``. With ``unless_running`` a running task
    is left alone (a deadline only stops a task from starting).
    """
    if record.terminal or (unless_running and record.status == "running"):
        return None, None
    attempts = lose_running(record.attempts)
    return _ended(record, status, attempts, now=now, error=error, reason=reason)


def cancel_task(record: TaskRecord, *, now: datetime, reason: str) -> Change:
    """A user cancels a non-terminal task (``CancelTask``; terminal records stay).

    Its running attempt is recorded ``cancelled``; the event names that attempt's
    agent and says ``reason`` (default ``cancelled``).
    """
    if record.terminal:
        return None, None
    why = reason or "cancelled"
    error = ErrorInfo(error_type="TaskCancelled", message=why)
    attempts = [
        msgspec.structs.replace(a, status="cancelled", finished_at=now)
        if a.status == "running"
        else a
        for a in record.attempts
    ]
    return _ended(
        record, "cancelled", attempts, now=now, error=error, reason=why, agent_id=record.agent_id
    )


def _ended(
    record: TaskRecord,
    status: TaskStatus,
    attempts: list[Attempt],
    *,
    now: datetime,
    error: ErrorInfo,
    reason: str,
    agent_id: str | None = None,
) -> Change:
    """``record`` ended ``status`` by the scheduler at ``now``, and its event."""
    updated = msgspec.structs.replace(
        record,
        status=status,
        attempts=attempts,
        error=error,
        finished_at=now,
        next_attempt_at=None,
        updated_at=now,
    )
    event = _event(
        record,
        status,
        at=now,
        attempt=_latest(record),
        agent_id=agent_id,
        error=error,
        reason=reason,
    )
    return updated, event
