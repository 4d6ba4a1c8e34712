"""agentbus supervisor service."""
