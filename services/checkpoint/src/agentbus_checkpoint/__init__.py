"""agentbus checkpoint service."""
