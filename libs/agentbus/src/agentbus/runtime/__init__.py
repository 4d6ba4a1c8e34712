"""The agent runtime: ``Agent`` runs task handlers, ``TaskContext`` is what one gets.

- ``agent``: ``Agent``: registration, heartbeats, handlers, the process entry point
  (event handlers, ``@agent.on_event``, come from ``agentbus.events.handlers``);
- ``context``: ``TaskContext``: lease, checkpoints, traces, subtasks, hand-offs;
- ``intake``: which band to pull, for how many free slots, on which notice;
- ``delivery``: one delivered task's path from decode to ack;
- ``attempt``: one attempt: timeout, lease renewal, the result report;
- ``cancellation``: cancel notices stop the handlers of cancelled tasks;
- ``routes``: the handler shapes a capability accepts;
- ``rebind``: binding the task consumers again after they were deleted.
"""

from agentbus.runtime.agent import Agent
from agentbus.runtime.context import TaskContext

__all__ = ["Agent", "TaskContext"]
