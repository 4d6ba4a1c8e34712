"""Durable agent state on the checkpoint service.

- ``checkpoints``: ``CheckpointClient``: versioned checkpoints per owner, thread and
  namespace (put with an expected parent, history, fork, delete, pending writes);
- ``agent_state``: ``AgentState`` and ``StateThread``: an agent's and a task's state,
  saved while the handler runs and restored after a crash.
"""

from agentbus.state.agent_state import (
    AgentState,
    StateThread,
    checkpointing,
    task_state,
    task_thread,
)

__all__ = ["AgentState", "StateThread", "checkpointing", "task_state", "task_thread"]
