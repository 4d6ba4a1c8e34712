"""``GET /v1/tasks/{task_id}/subtasks``: a task's subtask tree, depth first.

Each record lists its subtasks (``TaskRecord.children``, in submit order), so the
tree is read record by record (one level at a time, a level's records
concurrently) up to ``max_tasks`` records; a task that handed off is shown with
``handoff_to`` (the task that took its work is not one of its subtasks).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get
from litestar.params import QueryParameter

from agentbus.errors import NotFoundError
from agentbus.messages import TaskRecord, TaskStatus
from agentbus_gateway.auth import needs
from agentbus_gateway.models import TaskIdPath
from agentbus_gateway.routes import Ctx, error_responses


class SubtaskNode(msgspec.Struct, kw_only=True):
    """One task of the tree: ``depth`` 0 is the asked task, its subtasks 1, and so on."""

    task_id: str
    depth: int
    capability: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None
    agent_id: str | None = None
    finished_at: datetime | None = None
    children: list[str] = []
    handoff_to: str | None = None


class SubtaskTree(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/tasks/{task_id}/subtasks``: the tree in depth-first order.

    ``truncated``: the tree has more than ``max_tasks`` tasks (the deepest are left
    out); ``missing``: subtask ids whose records are gone (expired).
    """

    root: str
    tasks: list[SubtaskNode]
    truncated: bool = False
    missing: list[str] = []


def _node(record: TaskRecord, depth: int) -> SubtaskNode:
    return SubtaskNode(
        task_id=record.task_id,
        depth=depth,
        capability=record.capability,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        parent_id=record.parent_id,
        agent_id=record.agent_id,
        finished_at=record.finished_at,
        children=list(record.children),
        handoff_to=record.handoff_to,
    )


@get(
    "/v1/tasks/{task_id:str}/subtasks",
    summary="A task's subtask tree",
    description=(
        "The task and its subtasks all the way down, depth first (each with `depth` "
        "and `parent_id`), at most `max_tasks` of them. 404 unknown task."
    ),
    responses=error_responses(404, 503, 504),
    tags=["tasks"],
    **needs("tasks:read"),
)
async def subtask_tree(
    task_id: TaskIdPath,
    ctx: Ctx,
    max_tasks: Annotated[
        int, QueryParameter(ge=1, le=5000, description="Most tasks in the tree")
    ] = 500,
) -> SubtaskTree:
    """The subtask tree of ``task_id``."""
    client = ctx.client
    root = await client.get(task_id)  # NotFoundError -> 404
    records: dict[str, TaskRecord] = {task_id: root}
    missing: list[str] = []
    level, truncated = list(root.children), False
    while level:
        room = max_tasks - len(records)
        wanted = [t for t in dict.fromkeys(level) if t not in records]
        if len(wanted) > room:
            wanted, truncated = wanted[:room], True
        found = await asyncio.gather(*(client.get(t) for t in wanted), return_exceptions=True)
        level = []
        for t, got in zip(wanted, found, strict=True):
            if isinstance(got, NotFoundError):
                missing.append(t)
            elif isinstance(got, BaseException):
                raise got
            else:
                records[t] = got
                level += got.children
        if truncated:
            break
    tasks: list[SubtaskNode] = []
    stack, seen = [(task_id, 0)], set()
    while stack:
        current, depth = stack.pop()
        if current in seen or (record := records.get(current)) is None:
            continue
        seen.add(current)
        tasks.append(_node(record, depth))
        stack += [(c, depth + 1) for c in reversed(record.children)]
    return SubtaskTree(root=task_id, tasks=tasks, truncated=truncated, missing=missing)


TASK_TREE_ROUTES = [subtask_tree]
