"""agentbus registry service."""
