"""The HTTP view of a task record must not drift from the record on the bus."""

from __future__ import annotations

import msgspec

from agentbus.messages import TaskRecord
from agentbus_gateway.models import VIEW_ONLY_FIELDS, TaskView


def test_task_view_has_every_task_record_field() -> None:
    # TaskView exists only because Litestar's OpenAPI cannot describe msgspec.Raw;
    # a field added to TaskRecord must be added to TaskView too (before the view's own).
    record_fields = [f.name for f in msgspec.structs.fields(TaskRecord)]
    view_fields = [f.name for f in msgspec.structs.fields(TaskView)]
    assert view_fields == record_fields + list(VIEW_ONLY_FIELDS)
