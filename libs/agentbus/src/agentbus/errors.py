"""Exceptions raised by agentbus.

Every error has a stable ``code`` that travels in the ``Nats-Service-Error-Code``
header of a service reply (the ``nats.micro`` convention) and maps back to the same
class on the caller's side::

    AgentBusError                      internal (500)
     ├─ ContractError                  a payload or spec failed validation (400)
     ├─ NotFoundError                  (404)
     ├─ ConflictError                  (409)
     ├─ UnavailableError               retryable; a dependency is down (503)
     ├─ RequestTimeoutError            also a TimeoutError (504)
     │   └─ TaskWaitTimeoutError       a wait for a task ran out (says where it is)
     └─ TaskError                      raised by task handlers
         ├─ RetryableTaskError         the attempt failed; try again
         │   └─ TaskTimeoutError       the handler ran past the task's timeout_s
         └─ FatalTaskError             the task cannot succeed; do not retry
"""

from __future__ import annotations

from typing import ClassVar


class AgentBusError(Exception):
    """Root of every agentbus error."""

    code: ClassVar[str] = "500"
    retryable: ClassVar[bool] = False


class ContractError(AgentBusError):
    """A payload, spec or argument does not satisfy the contract."""

    code = "400"


class NotFoundError(AgentBusError):
    """The named entity (task, agent, checkpoint, ...) does not exist."""

    code = "404"


class ConflictError(AgentBusError):
    """A concurrent write won, or the request contradicts the current state."""

    code = "409"


class UnavailableError(AgentBusError):
    """A dependency (NATS, Docker, a service) is not reachable right now."""

    code = "503"
    retryable = True


class RequestTimeoutError(AgentBusError, TimeoutError):
    """No reply on ``subject`` within ``timeout_s`` seconds."""

    code = "504"
    retryable = True

    def __init__(self, subject: str, timeout_s: float) -> None:
        self.subject = subject
        self.timeout_s = timeout_s
        super().__init__(f"no reply on {subject!r} within {timeout_s:.3f} s")


class TaskWaitTimeoutError(RequestTimeoutError):
    """A wait for task ``task_id`` ran out before the task ended.

    The message says the task's status and, for a queued task no live agent
    serves, that nobody does.
    """

    def __init__(self, task_id: str, timeout_s: float, detail: str) -> None:
        super().__init__(f"task {task_id}", timeout_s)
        self.task_id = task_id
        self.args = (f"task {task_id} is still {detail}",)


class TaskError(AgentBusError):
    """Base of the errors a task handler raises on purpose."""


class RetryableTaskError(TaskError):
    """The attempt failed for a passing reason; the task may be tried again."""

    retryable = True


class TaskTimeoutError(RetryableTaskError):
    """The handler ran longer than the task's ``timeout_s`` and was cancelled."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"handler cancelled after the task's timeout of {timeout_s:.3f} s")


class FatalTaskError(TaskError):
    """The task cannot succeed whatever the number of attempts."""


_BY_CODE: dict[str, type[AgentBusError]] = {
    cls.code: cls
    for cls in (
        AgentBusError,
        ContractError,
        NotFoundError,
        ConflictError,
        UnavailableError,
    )
}


def error_from_code(code: str, message: str) -> AgentBusError:
    """Rebuild the error a service reported in its reply headers."""
    return _BY_CODE.get(code, AgentBusError)(message)
