"""One task attempt on the agent side: checks, outcome, and the message's disposal.

The rules (``docs/protocol.md``, "Retries, deadlines and dead letters"):

- Before the start (``preflight``): a task past its ``deadline`` never starts, it ends
  ``expired``; a delivery whose count exceeds ``max_attempts`` (earlier deliveries
  ended without a result: agents lost mid-task, leases lapsed) is not run, the task
  ends ``dead``.
- The handler runs under the task's ``timeout_s`` (``run_with_timeout``): past it, the
  handler is cancelled and the attempt fails with the retryable ``TaskTimeoutError``.
- A failure goes through ``agentbus.retry.decide`` (``failure_result``): a retry is
  reported ``failed`` with ``retry_in_s`` and the message is nak'd with that delay;
  everything else ends the task and terms the message (``settle``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeVar

from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.errors import TaskTimeoutError
from agentbus.messages import ErrorInfo, Task, TaskResult, utcnow
from agentbus.retry import Action, decide
from agentbus.service import bad_messages_counter, publish_bad_message

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

T = TypeVar("T")

_STATUS: dict[Action, Literal["failed", "dead", "expired"]] = {
    "retry": "failed",
    "fail": "failed",
    "dead": "dead",
    "expire": "expired",
}


class AgentMetrics:
    """Prometheus metrics of an agent process, on ``Agent.registry``.

    The runtime serves no HTTP itself: an embedding process exposes ``registry``
    (``prometheus_client.start_http_server(port, registry=agent.registry)``).
    ``prometheus_client`` is imported, and each metric made, on first use: importing
    it is about 14 ms of CPU, 6 % of an agent's start-up, which is on the recovery
    path of a killed replica (docs/operations.md, "The fleet drill").
    """

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics are on."""
        from prometheus_client import CollectorRegistry

        return CollectorRegistry()

    @functools.cached_property
    def attempts(self) -> Counter:
        """``agentbus_agent_task_attempts_total{capability, outcome}``."""
        from prometheus_client import Counter

        return Counter(
            "agentbus_agent_task_attempts_total",
            "Task deliveries handled, by capability and outcome (succeeded, retried, "
            "failed, dead, expired, or returned on stop).",
            ["capability", "outcome"],
            registry=self.registry,
        )

    @functools.cached_property
    def rebinds(self) -> Counter:
        """``agentbus_agent_rebinds_total{capability}``."""
        from prometheus_client import Counter

        return Counter(
            "agentbus_agent_rebinds_total",
            "Times the task consumers of a capability were found gone (deleted, or the "
            "task stream recreated) and bound again without a restart.",
            ["capability"],
            registry=self.registry,
        )

    @functools.cached_property
    def bad_messages(self) -> Counter:
        """``agentbus_bad_messages_total{service="agent", source}``."""
        return bad_messages_counter(self.registry)

    def count(self, capability: str, result: TaskResult) -> None:
        """Count the outcome of one delivery from the result reported for it."""
        outcome = "retried" if result.retry_in_s is not None else result.status
        self.attempts.labels(capability, outcome).inc()


def preflight(task: Task, attempt: int, *, agent_id: str, now: datetime) -> TaskResult | None:
    """The result that ends ``task`` before delivery ``attempt`` starts, or None to run it.

    ``expired`` when ``now`` is at or past ``task.deadline``; ``dead`` when ``attempt``
    exceeds ``task.max_attempts``.
    """
    status: Literal["expired", "dead"]
    if task.deadline is not None and now >= task.deadline:
        status = "expired"
        error = ErrorInfo(
            error_type="DeadlineExceeded",
            message=f"deadline {task.deadline.isoformat()} passed before attempt {attempt}",
        )
    elif attempt > task.max_attempts:
        status = "dead"
        error = ErrorInfo(
            error_type="AttemptsExhausted",
            message=(
                f"delivery {attempt} exceeds max_attempts {task.max_attempts}: earlier "
                "deliveries ended without a result (agent lost mid-task, lease lapsed)"
            ),
            retryable=True,
        )
    else:
        return None
    return TaskResult(
        task_id=task.task_id,
        agent_id=agent_id,
        attempt=attempt,
        status=status,
        started_at=now,
        finished_at=now,
        error=error,
    )


def failure_result(
    task: Task, attempt: int, exc: BaseException, *, agent_id: str, started_at: datetime
) -> TaskResult:
    """The report of delivery ``attempt`` that failed with ``exc`` (``retry.decide``)."""
    now = utcnow()
    decision = decide(task, attempt, exc, now=now)
    return TaskResult(
        task_id=task.task_id,
        agent_id=agent_id,
        attempt=attempt,
        status=_STATUS[decision.action],
        started_at=started_at,
        finished_at=now,
        error=decision.error,
        retry_in_s=decision.retry_in_s,
        ran=True,
    )


async def run_with_timeout(
    work: Awaitable[T],
    timeout_s: float | None,
    *,
    on_scope: Callable[[asyncio.Timeout], None] | None = None,
) -> T:
    """Await ``work``, cancelling it after ``timeout_s`` seconds (None: no limit).

    ``on_scope`` gets the timeout's scope before ``work`` starts (an approval wait
    stops the clock: ``agentbus.runtime.approvals.Parking``).

    Raises:
        TaskTimeoutError: ``work`` was cancelled at the timeout (a ``TimeoutError``
            raised by ``work`` itself passes through unchanged).
    """
    if timeout_s is None:
        return await work
    scope = asyncio.timeout(timeout_s)
    if on_scope is not None:
        on_scope(scope)
    try:
        async with scope:
            return await work
    except TimeoutError:
        if scope.expired():
            raise TaskTimeoutError(timeout_s) from None
        raise


async def settle(msg: Msg, result: TaskResult) -> None:
    """Dispose of the task message once ``result`` is reported.

    ``succeeded``: ack. ``failed`` with ``retry_in_s``: nak with that delay (the next
    delivery is the next attempt). Anything else ends the task: term (a WorkQueue
    stream removes a termed message).
    """
    if result.status == "succeeded":
        await msg.ack()
    elif result.retry_in_s is not None:
        await msg.nak(delay=result.retry_in_s)
    else:
        await msg.term()


def poison_reporter(
    bus: Bus, metrics: AgentMetrics, *, agent_id: str, source: str
) -> Callable[[str, str], Awaitable[None]]:
    """``report(subject, reason)`` for a message from ``source`` that does not decode.

    It logs, counts ``agentbus_bad_messages_total{service="agent", source}`` and
    publishes an ``ErrorEvent`` (``service`` ``agent:<agent_id>``) on
    ``<p>.events.error.agent.<agent_id>`` (``Names.agent_error_subject``), best
    effort. ``source`` is ``tasks`` (the caller also terminates the message),
    ``control`` (cancel notices) or ``ready`` (ready notices).
    """

    async def report(subject: str, reason: str) -> None:
        await publish_bad_message(
            bus,
            metrics.bad_messages,
            service=f"agent:{agent_id}",
            entity="agent",
            event_kind=f"agent.{agent_id}",
            source=source,
            subject=subject,
            reason=reason,
        )

    return report
