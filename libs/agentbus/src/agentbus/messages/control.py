"""Task control: cancel requests, and the core-NATS notices every agent hears.

Notices are plain (non-JetStream) publishes: cheap, lost when nobody listens.
Nothing depends on a notice alone: a missed ``TasksReady`` costs at most an agent's
rescan interval, a missed ``CancelNotice`` is covered by the scheduler deleting
the task's message from the work stream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from agentbus.messages.common import Message, TaskId
from agentbus.messages.tasks import TaskRecord

Band = Annotated[int, msgspec.Meta(ge=0, le=9)]
"""A priority band: the task's ``priority`` (0 lowest, 9 highest)."""


class TasksReady(Message, frozen=True, kw_only=True):
    """Notice that ``count`` tasks were put on a band's subject (or are due again there).

    On ``<p>.control.ready.<capability>`` it wakes *one* agent: agents listen in a
    queue group, and only while they have a free slot. The scheduler publishes one
    right behind a lone task's publish (before the stream's ack: the pull that
    follows may wait briefly for the task to be stored) and one per burst after the
    burst's acks; an agent passes on what it cannot take. A notice that found no
    listener (every agent full) is repeated on ``<p>.control.backlog.<capability>``,
    which every agent hears: the next agent with a free slot pulls that band first.
    """

    capability: str
    band: Band = 0
    count: Annotated[int, msgspec.Meta(ge=1)] = 1
    """How many tasks this notice announces; the agent pulls up to that many."""


class CancelTask(Message, frozen=True, kw_only=True):
    """Request to the scheduler (``<p>.scheduler.cancel``): cancel a task.

    With ``recursive`` (the default) the task's subtasks are cancelled too, all the
    way down. A task that already finished keeps its status; its subtree is still
    walked. A task that was handed off is followed to the task that took it over.
    """

    task_id: TaskId
    recursive: bool = True
    reason: str = ""
    """Free text, recorded in the cancelled records' ``error.message``."""


class CancelReply(Message, frozen=True, kw_only=True):
    """Reply to ``CancelTask``: the task's record after the call, and what it cancelled.

    ``cancelled`` lists every task id this call moved to ``cancelled`` (the task, the
    tasks it handed off to, and its descendants), in the order they were cancelled.
    """

    task: TaskRecord
    cancelled: list[str] = []


class CancelNotice(Message, frozen=True, kw_only=True):
    """Notice on ``<p>.control.cancel``: these tasks were cancelled.

    An agent running one of them cancels its handler (within a second), reports
    ``TaskResult{status: "cancelled"}`` and terminates the message; an agent that is
    later delivered one of them (the notice raced the fetch) terminates it unstarted.
    """

    task_ids: list[str]
    at: datetime


MESSAGES: tuple[type[Message], ...] = (
    TasksReady,
    CancelTask,
    CancelReply,
    CancelNotice,
)
