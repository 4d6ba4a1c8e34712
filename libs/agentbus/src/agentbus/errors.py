"""Exceptions raised by agentbus.

Every error has a stable ``code`` that travels in the ``Nats-Service-Error-Code``
header of a service reply (the ``nats.micro`` convention) and maps back to the same
class on the caller's side::

    AgentBusError                      internal (500)
     ├─ ContractError                  a payload or spec failed validation (400)
     │   ├─ SpecError                  a fleet file or deployment spec, every issue
     │   ├─ CheckpointCorruptedError   a stored checkpoint failed its SHA-256 check
     │   └─ SecretError                a deployment secret or secrets key is unusable
     │       ├─ SecretKeyMismatchError sealed to a key id the opener does not hold
     │       └─ SecretCorruptedError   a sealed value does not open (tampered, bad base64)
     ├─ AuthenticationError            no credential, or not a valid one (401)
     ├─ PermissionDeniedError          a valid credential without the right (403)
     ├─ ForbiddenError                 the request is not the caller's to make (403)
     ├─ NotFoundError                  (404)
     │   └─ SecretsKeyMissingError     no secrets public key is published to seal to
     ├─ ConflictError                  (409)
     │   ├─ CheckpointConflictError    a put's expected parent is not the latest
     │   └─ StackRunningError          another embedded stack owns the state file
     ├─ UnavailableError               retryable; a dependency is down (503)
     ├─ RateLimitedError               retryable after ``retry_after_s`` (429)
     ├─ RequestTimeoutError            also a TimeoutError (504)
     │   └─ TaskWaitTimeoutError       a wait for a task ran out (says where it is)
     └─ TaskError                      raised by task handlers
         ├─ RetryableTaskError         the attempt failed; try again
         │   └─ TaskTimeoutError       the handler ran past the task's timeout_s
         └─ FatalTaskError             the task cannot succeed; do not retry
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar, NamedTuple


class AgentBusError(Exception):
    """Root of every agentbus error."""

    code: ClassVar[str] = "500"
    retryable: ClassVar[bool] = False


class ContractError(AgentBusError):
    """A payload, spec or argument does not satisfy the contract."""

    code = "400"


class AuthenticationError(AgentBusError):
    """No credential was presented, or it is unknown, malformed, revoked or expired.

    Raised for an HTTP request without a valid token, and for a NATS connect the server
    refuses (reason ``refused``).

    The message never contains the presented secret.

    Attributes:
        reason: why, one of ``missing``, ``malformed``, ``unknown``, ``revoked``,
            ``expired`` (a metric label).
    """

    code = "401"

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class PermissionDeniedError(AgentBusError):
    """A valid credential that lacks the scope the action needs.

    Attributes:
        scope: the scope the action needs.
    """

    code = "403"

    def __init__(self, scope: str, message: str) -> None:
        self.scope = scope
        super().__init__(message)


class ForbiddenError(AgentBusError):
    """The request names an owner other than the one its subject is for.

    E.g. a checkpoint request on ``<p>.checkpoint.<verb>.<owner>`` whose payload
    ``agent_id`` is another owner's: NATS permissions allow a client the subjects of
    its own owners, so the payload must not name another.
    """

    code = "403"


class RateLimitedError(AgentBusError):
    """Too many requests for one credential; try again after ``retry_after_s`` seconds."""

    code = "429"
    retryable = True

    def __init__(self, retry_after_s: int, message: str) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


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


class SpecIssue(NamedTuple):
    """One problem in a spec: the dotted field path, what is wrong, the line if known."""

    field: str
    message: str
    line: int | None = None


class SpecError(ContractError):
    """A fleet file or deployment spec is invalid; ``issues`` lists every problem found.

    ``str()`` gives one line per issue, ``<source>:<line>: <field>: <message>``; with
    ``one_line`` (errors that travel in a NATS header) ``<source>: <field>: <message>;
    <field>: <message>...``.
    """

    def __init__(self, source: str, issues: Iterable[SpecIssue], *, one_line: bool = False) -> None:
        self.source = source
        self.issues = list(issues)
        if one_line:
            text = f"{source}: " + "; ".join(f"{i.field}: {i.message}" for i in self.issues)
        else:
            text = "\n".join(
                f"{source}:{i.line}: {i.field}: {i.message}"
                if i.line
                else f"{source}: {i.field}: {i.message}"
                for i in self.issues
            )
        super().__init__(text)


class CheckpointConflictError(ConflictError):
    """A put named a parent that is not the thread's latest checkpoint.

    Attributes:
        expected_id: the parent the writer built on (None: it expected an empty thread).
        latest_id: the thread's latest checkpoint when the put was refused (None: empty).
    """

    retryable = True  # a retry reloads the newer state and goes on from there
    _RE = re.compile(r"expected parent (?P<expected>\S+), latest is (?P<latest>\S+?)[,;)]")

    def __init__(self, expected_id: str | None, latest_id: str | None, where: str = "") -> None:
        self.expected_id = expected_id
        self.latest_id = latest_id
        super().__init__(
            f"checkpoint conflict: expected parent {expected_id or '-'}, "
            f"latest is {latest_id or '-'}; {where}"
        )

    @classmethod
    def from_message(cls, message: str) -> CheckpointConflictError | None:
        """Rebuild the error from its message (as carried in a 409 reply), if it is one."""
        m = cls._RE.search(message)
        if m is None:
            return None
        expected, latest = m["expected"], m["latest"]
        err = cls(None if expected == "-" else expected, None if latest == "-" else latest)
        err.args = (message,)
        return err


class CheckpointCorruptedError(ContractError):
    """A stored checkpoint failed its SHA-256 check or did not decode."""

    PREFIX = "checkpoint corrupted: "

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.PREFIX}{detail}")


class SecretError(ContractError):
    """A deployment secret, or a secrets key file, cannot be used (never shows a value)."""


class SecretKeyMismatchError(SecretError):
    """Secret ``name`` is sealed to key ``key_id``; the opener holds only ``held``."""

    def __init__(self, name: str, key_id: str, held: Iterable[str]) -> None:
        self.name, self.key_id, self.held = name, key_id, sorted(held)
        super().__init__(
            f"secret {name!r} is sealed to secrets key {key_id}; this supervisor holds "
            f"{', '.join(self.held) or 'no key'} (give every node the same key file, "
            "or apply the fleet again to seal it to the published key)"
        )


class SecretCorruptedError(SecretError):
    """Secret ``name`` (sealed to ``key_id``) does not open: tampered, cut or bad base64."""

    def __init__(self, name: str, key_id: str, detail: str) -> None:
        self.name, self.key_id = name, key_id
        super().__init__(f"secret {name!r} (key {key_id}) does not open: {detail}")


class SecretsKeyMissingError(NotFoundError):
    """No secrets public key is published in KV ``bucket``, so nothing can be sealed."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        super().__init__(
            f"no secrets public key is published in KV {bucket!r}: start a supervisor "
            "(it publishes its key; set SUPERVISOR_SECRETS_KEY_FILE to share one key "
            "across nodes) before applying a fleet with secret env values"
        )


class TaskWaitTimeoutError(RequestTimeoutError):
    """A wait for task ``task_id`` ran out before the task ended.

    The message says the task's status and, for a queued task no live agent
    serves, that nobody does.
    """

    def __init__(self, task_id: str, timeout_s: float, detail: str) -> None:
        super().__init__(f"task {task_id}", timeout_s)
        self.task_id = task_id
        self.args = (f"task {task_id} is still {detail}",)


class StackRunningError(ConflictError):
    """Another live embedded stack owns the state file ``path``.

    Attributes:
        path: the state file.
        nats_url: the live stack's NATS URL (None: it is still starting).
        pid: the process that owns the file, if known.
    """

    def __init__(self, path: str, *, nats_url: str | None = None, pid: int | None = None) -> None:
        self.path, self.nats_url, self.pid = path, nats_url, pid
        if pid is None and not nats_url:
            what = "another embedded stack is starting"
        else:
            what = f"an embedded stack is already running at {nats_url or '(starting)'} (pid {pid})"
        super().__init__(
            f"{what}; state file {path}. Stop it, or give this one its own state file "
            "(--state-file or AGENTBUS_STATE_FILE)"
        )


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
        ForbiddenError,
        NotFoundError,
        ConflictError,
        UnavailableError,
    )
}


def error_from_code(code: str, message: str) -> AgentBusError:
    """Rebuild the error a service reported in its reply headers."""
    return _BY_CODE.get(code, AgentBusError)(message)
