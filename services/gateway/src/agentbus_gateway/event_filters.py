"""What an event stream over HTTP selects: subject filters plus payload checks.

Events are stored on ``<p>.events.<entity>.<kind>[.<id>...]``. An event's *kind* is
``<entity>.<kind>`` (``task.succeeded``, ``agent.joined``, ``error.agent``,
``replica.started``); the SSE ``event:`` field carries it.

- ``kind`` (repeatable) and ``task_id`` become the consumer's filter subjects, so the
  server does that filtering: ``task`` selects ``<p>.events.task.>``, ``task.failed``
  selects ``<p>.events.task.failed`` and ``<p>.events.task.failed.>``, ``*.joined``
  any entity's ``joined``; ``task_id`` selects ``<p>.events.task.<status>.<task_id>``
  (a task's events only, so its kinds must be ``task`` ones).
- ``capability``, ``agent`` and ``deployment`` are checked on the payload: its
  ``capability``, ``agent_id`` (or the subject ``<p>.events.error.agent.<agent>``) and
  ``deployment`` field. An event without that field does not match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agentbus.names import Names, check_task_id
from agentbus_gateway.errors import RequestRefusedError

_TOKEN_RE = re.compile(r"^(\*|[a-z0-9_-]{1,64})$")
MAX_KINDS = 16
"""Most ``kind`` values one request may give."""


def kind_of(subject: str, names: Names) -> str:
    """The kind of an event subject: ``<entity>.<kind>`` (``task.succeeded``)."""
    tokens = subject.removeprefix(f"{names.prefix}.events.").split(".")
    return ".".join(tokens[:2])


def _parse_kind(kind: str) -> tuple[str, str | None]:
    tokens = kind.split(".")
    if len(tokens) > 2 or not all(_TOKEN_RE.match(t) for t in tokens):
        raise RequestRefusedError(
            400,
            f"kind {kind[:80]!r} must be <entity> or <entity>.<kind>, each [a-z0-9_-] or *",
            field="kind",
        )
    return tokens[0], tokens[1] if len(tokens) == 2 else None


def _overlap(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    def same(x: str | None, y: str | None) -> bool:
        return x is None or y is None or x == "*" or y == "*" or x == y

    return same(a[0], b[0]) and same(a[1], b[1])


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The parsed filters of one event stream request.

    Attributes:
        subjects: the consumer's filter subjects (the server filters by these).
        capability: the payload's ``capability`` must be this (None: any).
        agent: the payload's ``agent_id`` (or the agent error subject) must be this.
        deployment: the payload's ``deployment`` must be this.
    """

    subjects: tuple[str, ...]
    capability: str | None = None
    agent: str | None = None
    deployment: str | None = None
    agent_error_subject: str | None = None

    @property
    def payload_level(self) -> bool:
        """Whether some events the server sends may not match (payload checks)."""
        return bool(self.capability or self.agent or self.deployment)

    def matches(self, subject: str, payload: Any) -> bool:
        """Whether the event on ``subject`` with decoded ``payload`` passes the checks."""
        if not self.payload_level:
            return True
        body = payload if isinstance(payload, dict) else {}
        if self.capability is not None and body.get("capability") != self.capability:
            return False
        if self.deployment is not None and body.get("deployment") != self.deployment:
            return False
        if self.agent is not None:
            return body.get("agent_id") == self.agent or subject == self.agent_error_subject
        return True


def event_filter(
    names: Names,
    *,
    kinds: list[str] | None = None,
    task_id: str | None = None,
    capability: str | None = None,
    agent: str | None = None,
    deployment: str | None = None,
) -> EventFilter:
    """The ``EventFilter`` of a request's query parameters.

    Raises:
        RequestRefusedError: (400) a bad kind, overlapping kinds, more than
            ``MAX_KINDS`` kinds, kinds that no task event has with ``task_id``, or an
            empty or over-long payload filter.
        ContractError: a bad task id (400).
    """
    p = names.prefix
    parsed = [_parse_kind(k) for k in dict.fromkeys(kinds or [])]
    if len(parsed) > MAX_KINDS:
        raise RequestRefusedError(
            400, f"at most {MAX_KINDS} kind values, got {len(parsed)}", "kind"
        )
    for i, a in enumerate(parsed):
        for b in parsed[i + 1 :]:
            if _overlap(a, b):
                shown = [".".join(t for t in k if t) for k in (a, b)]
                raise RequestRefusedError(
                    400, f"kinds {shown[0]!r} and {shown[1]!r} overlap", "kind"
                )
    subjects: list[str] = []
    if task_id is not None:
        check_task_id(task_id)
        task_kinds = [k for e, k in parsed if e in ("task", "*")] if parsed else ["*"]
        if parsed and len(task_kinds) < len(parsed):
            raise RequestRefusedError(400, "with task_id, every kind must be a task kind", "kind")
        subjects = [f"{p}.events.task.{k or '*'}.{task_id}" for k in task_kinds]
        if len(subjects) > 1 and "*" in task_kinds:
            subjects = [f"{p}.events.task.*.{task_id}"]
    elif not parsed:
        subjects = [names.events_all()]
    for entity, kind in parsed if task_id is None else ():
        if kind is None:
            subjects.append(f"{p}.events.{entity}.>")
        else:
            subjects += [f"{p}.events.{entity}.{kind}", f"{p}.events.{entity}.{kind}.>"]
    for value, field in ((capability, "capability"), (agent, "agent"), (deployment, "deployment")):
        if value is not None and not 0 < len(value) <= 256:
            raise RequestRefusedError(400, f"{field} must be 1-256 characters", field)
    return EventFilter(
        subjects=tuple(subjects),
        capability=capability,
        agent=agent,
        deployment=deployment,
        agent_error_subject=names.agent_error_subject(agent) if agent else None,
    )
