"""agentbus archiver: the events stream into PostgreSQL."""
