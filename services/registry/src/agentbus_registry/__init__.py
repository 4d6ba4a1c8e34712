"""agentbus registry service: live agents and nodes from KV heartbeats."""

from agentbus_registry.service import serve
from agentbus_registry.settings import RegistrySettings

__all__ = ["RegistrySettings", "serve"]
