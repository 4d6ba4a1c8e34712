"""agentbus gateway service."""
