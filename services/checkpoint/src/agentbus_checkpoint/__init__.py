"""agentbus checkpoint service: versioned agent state per agent and thread."""

from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings

__all__ = ["CheckpointSettings", "serve"]
