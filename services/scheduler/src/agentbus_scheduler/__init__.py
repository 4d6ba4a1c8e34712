"""agentbus scheduler service."""
