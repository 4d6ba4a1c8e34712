"""One event as one audit row: columns from the subject and the payload, whatever it is."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agentbus.audit import event_row
from agentbus.errors import ContractError

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _row(subject: str, data: bytes) -> tuple[object, str | None]:
    return event_row("p", seq=7, time=AT, subject=subject, data=data)


def test_columns_come_from_the_subject_and_the_payloads_fields() -> None:
    payload = {"task_id": "t1", "agent_id": "a-0", "deployment": "d", "capability": "c", "x": 1}
    row, problem = event_row(
        "p", seq=7, time=AT, subject="p.events.task.running.t1", data=json.dumps(payload).encode()
    )
    assert problem is None
    assert row.values()[:9] == (7, AT, "p.events.task.running.t1", "task", "running",
                                "t1", "a-0", "d", "c")  # fmt: skip
    assert json.loads(row.payload) == payload


def test_fields_that_are_not_strings_stay_out_of_the_columns() -> None:
    row, problem = event_row(
        "p", seq=1, time=AT, subject="p.events.x.y", data=b'{"task_id": 5, "agent_id": null}'
    )
    assert problem is None and row.task_id is None and row.agent_id is None


@pytest.mark.parametrize(
    ("data", "stored", "why"),
    [
        (b"not json", "not json", "payload is not JSON"),
        (b"[1, 2]", [1, 2], "payload is not a JSON object"),
        (b"\xff\xfe", "\ufffd\ufffd", "payload is not JSON"),
    ],
)
def test_a_bad_payload_is_still_a_row_and_named(data: bytes, stored: object, why: str) -> None:
    row, problem = event_row("p", seq=1, time=AT, subject="p.events.error.x", data=data)
    assert problem is not None and problem.startswith(why)
    assert json.loads(row.payload) == stored


def test_nul_characters_are_dropped_postgresql_refuses_them() -> None:
    row, _ = event_row(
        "p",
        seq=1,
        time=AT,
        subject="p.events.a.b",
        data=b'{"task_id": "t\\u0000", "v": "a\\u0000b"}',
    )
    assert row.task_id == "t" and json.loads(row.payload)["v"] == "ab"
    kept, _ = event_row("p", seq=1, time=AT, subject="p.events.a.b", data=b'{"v": "a\\\\u0000"}')
    assert json.loads(kept.payload)["v"] == "a\\u0000"  # an escaped backslash is not a NUL


def test_a_subject_without_kind_is_kept_other_subjects_are_refused() -> None:
    row, problem = event_row("p", seq=1, time=AT, subject="p.events.lonely", data=b"{}")
    assert (row.entity, row.kind, problem) == ("lonely", "", "event subject has no kind")
    with pytest.raises(ContractError):
        event_row("p", seq=1, time=AT, subject="q.events.a.b", data=b"{}")
