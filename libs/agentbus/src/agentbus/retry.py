"""Retry policy: backoff delays, and what a failed task attempt leads to.

The delay policy is ``messages.Backoff`` (task retries and replica restarts):
exponential growth capped at ``max_s`` with "equal jitter" (Marc Brooker,
"Exponential Backoff And Jitter", AWS Architecture Blog, 2015): half-deterministic so
delays still grow, half-random so that many clients failing together do not retry
together.

``decide`` is the retry rule of task attempts, applied by the agent runtime where the
message is (``docs/protocol.md``, "Retries"): retry with a delay (nak), fail (term),
dead (attempts exhausted, term) or expire (the retry would start after the deadline).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from agentbus.errors import ContractError, TaskError
from agentbus.messages import Backoff, ErrorInfo, Task

DEFAULT_BACKOFF = Backoff()


def backoff_s(policy: Backoff | None, n: int, *, rng: random.Random | None = None) -> float:
    """Delay in seconds before retry ``n`` (1 = the first retry) under ``policy``.

    ``d = min(max_s, initial_s * factor**(n-1))``, then a uniform draw in
    ``[d * (1 - jitter), d]``. ``policy`` ``None`` means ``Backoff()``.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"retry number starts at 1, got {n}")
    p = policy or DEFAULT_BACKOFF
    try:
        d = min(p.max_s, p.initial_s * p.factor ** (n - 1))
    except OverflowError:
        d = p.max_s
    low = d * (1.0 - p.jitter)
    return (rng or random).uniform(low, d)


# -- task attempts: what a failure leads to -------------------------------------------

MAX_ATTEMPTS_LIMIT = 100
"""Largest ``max_attempts`` a task may ask for (``SubmitTask.max_attempts``)."""
SAFETY_MAX_DELIVER = MAX_ATTEMPTS_LIMIT + 1
"""``max_deliver`` of every capability consumer: a backstop above any task's budget.

Agents end a task whose delivery count exceeds its ``max_attempts`` themselves (it
ends ``dead``), so JetStream's own limit is reached only when that last delivery is
lost as well (an agent that crashes on the task every time). Such a message stays in
the WorkQueue stream; the scheduler moves it to the dead letters.
"""

Action = Literal["retry", "fail", "dead", "expire"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt (``decide``).

    Attributes:
        action: ``retry`` (report ``failed`` with ``retry_in_s``, nak with that delay),
            ``fail`` (report ``failed``, term), ``dead`` (attempts exhausted: report
            ``dead``, term) or ``expire`` (the retry would start after the task's
            deadline: report ``expired``, term).
        error: the wire form of the failure; ``error.retryable`` is the error's class.
        retry_in_s: the backoff delay in seconds, for ``retry`` only.
    """

    action: Action
    error: ErrorInfo
    retry_in_s: float | None = None


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` may pass on another attempt: the retry policy for errors.

    ``RetryableTaskError`` (and ``TaskTimeoutError``) and ``FatalTaskError`` say so
    explicitly. Input that does not decode or validate (``ContractError``, msgspec's
    ``DecodeError``/``ValidationError``) is fatal: the same input fails the same way.
    Any other exception is retryable: agents mostly fail on transient faults (a model
    or API timing out, rate limits, a dropped connection), and the attempt budget
    bounds the cost of retrying a bug.
    """
    if isinstance(exc, TaskError):
        return exc.retryable
    return not isinstance(exc, ContractError | msgspec.DecodeError | msgspec.ValidationError)


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_info(exc: BaseException, *, retryable: bool | None = None) -> ErrorInfo:
    """The wire form of ``exc``: type name, one-line message (<= 500 characters).

    ``retryable`` defaults to ``is_retryable(exc)``.
    """
    return ErrorInfo(
        error_type=type(exc).__name__,
        message=_one_line(str(exc)) or type(exc).__name__,
        retryable=is_retryable(exc) if retryable is None else retryable,
    )


def decide(
    task: Task,
    attempt: int,
    exc: BaseException,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What follows the failure ``exc`` of delivery ``attempt`` (1-based) of ``task``.

    - not retryable (``is_retryable``): ``fail``;
    - retryable, ``attempt >= task.max_attempts``: ``dead``;
    - retryable, the backoff delay ``backoff_s(task.backoff, attempt)`` would start
      the next attempt at or after ``task.deadline``: ``expire``;
    - else ``retry`` after that delay.
    """
    retryable = is_retryable(exc)
    error = error_info(exc, retryable=retryable)
    if not retryable:
        return Decision("fail", error)
    if attempt >= task.max_attempts:
        return Decision("dead", error)
    delay = backoff_s(task.backoff, attempt, rng=rng)
    if task.deadline is not None:
        now = now or datetime.now(UTC)
        if now + timedelta(seconds=delay) >= task.deadline:
            return Decision("expire", error)
    return Decision("retry", error, retry_in_s=delay)
