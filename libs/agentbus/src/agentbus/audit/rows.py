"""One event of the events stream as one row of the audit table ``events``.

An event travels on ``<p>.events.<entity>.<kind>[.<more>]`` (``docs/protocol.md``,
"Events"): ``entity`` and ``kind`` come from the subject, the indexed columns
(``task_id``, ``agent_id``, ``deployment``, ``capability``) from the JSON payload's
top-level fields of those names, whatever the event type, so new event types need
no code here. A payload that is not a JSON object is still archived (as a JSON string
of its text) and reported: the audit trail keeps every event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from agentbus.errors import ContractError

INDEXED_FIELDS = ("task_id", "agent_id", "deployment", "capability")
"""Payload fields copied into columns of their own (indexed where queried)."""
COLUMNS = ("seq", "time", "subject", "entity", "kind", *INDEXED_FIELDS, "payload")
"""Columns of ``events``, in insert order."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of ``events``.

    Attributes:
        seq: the event's stream sequence in ``<P>_EVENTS`` (primary key).
        time: when the stream stored it (UTC).
        subject: its full subject.
        entity: subject token after ``events`` (``task``, ``agent``, ``replica``, ...).
        kind: the token after ``entity`` (a task's status, ``joined``, ...).
        task_id: the payload's ``task_id``, if a string.
        agent_id: the payload's ``agent_id``, if a string.
        deployment: the payload's ``deployment``, if a string.
        capability: the payload's ``capability``, if a string.
        payload: the payload as JSON text (an object, or a string for a bad payload).
    """

    seq: int
    time: datetime
    subject: str
    entity: str
    kind: str
    task_id: str | None
    agent_id: str | None
    deployment: str | None
    capability: str | None
    payload: str

    def values(self) -> tuple[object, ...]:
        """The row's values in ``COLUMNS`` order."""
        return (
            self.seq,
            self.time,
            self.subject,
            self.entity,
            self.kind,
            self.task_id,
            self.agent_id,
            self.deployment,
            self.capability,
            self.payload,
        )


def event_row(
    prefix: str, *, seq: int, time: datetime, subject: str, data: bytes
) -> tuple[EventRow, str | None]:
    """The row of event ``seq``, and what is wrong with the event (else None).

    A payload that is not a JSON object, or a subject without a kind, is still a row.

    Raises:
        ContractError: ``subject`` is not under ``<prefix>.events.``.
    """
    tokens = subject.split(".")
    if len(tokens) < 3 or tokens[0] != prefix or tokens[1] != "events":
        raise ContractError(f"{subject!r} is not an event subject of prefix {prefix!r}")
    problem = None if len(tokens) > 3 else "event subject has no kind"
    fields: dict[str, object] = {}
    decoded: object
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        problem, decoded = f"payload is not JSON: {exc}", data.decode("utf-8", errors="replace")
    else:
        if isinstance(decoded, dict):
            fields = decoded
        else:
            problem = "payload is not a JSON object"
    payload = json.dumps(decoded, ensure_ascii=False)
    if "\\u0000" in payload:  # PostgreSQL text and jsonb refuse NUL characters
        payload = json.dumps(_without_nul(decoded), ensure_ascii=False)
    picked = {
        name: v.replace("\0", "") if isinstance(v := fields.get(name), str) else None
        for name in INDEXED_FIELDS
    }
    row = EventRow(
        seq=seq,
        time=time,
        subject=subject.replace("\0", ""),
        entity=tokens[2],
        kind=tokens[3] if len(tokens) > 3 else "",
        payload=payload,
        **picked,
    )
    return row, problem


def _without_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\0", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {str(k).replace("\0", ""): _without_nul(v) for k, v in value.items()}
    return value
