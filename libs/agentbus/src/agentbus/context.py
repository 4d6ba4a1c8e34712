"""What a task handler gets besides its input: ``TaskContext``.

A handler is ``async def fn(ctx: TaskContext, input) -> output``. The context names
the task and the attempt and carries the agent's connection, so a handler can submit
subtasks and read records without opening a connection of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import Task
from agentbus.state import StateThread, task_state
from agentbus.traces import Traces


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler gets besides its input.

    Attributes:
        task: the task message (id, capability, metadata, ...).
        attempt: delivery number of this attempt, from 1.
        agent_id: id of the agent running the handler.
        bus: the agent's connection.
        client: a ``Client`` on that connection (submit subtasks, read records).
    """

    task: Task
    attempt: int
    agent_id: str
    bus: Bus
    client: Client
    _checkpoint: list[StateThread] = field(default_factory=list, repr=False)

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id

    @property
    def checkpoint(self) -> StateThread:
        """This task's progress checkpoints (``agentbus.state.StateThread``).

        ``load``, ``save``, ``update``; a redelivered attempt on any agent of the
        capability finds what an earlier attempt saved.
        """
        if not self._checkpoint:
            self._checkpoint.append(task_state(self.bus, self.task.capability, self.task_id))
        return self._checkpoint[0]

    @property
    def traces(self) -> Traces:
        """Stigmergy traces on the agent's connection (``agentbus.traces``, shared)."""
        return Traces.of(self.bus)
