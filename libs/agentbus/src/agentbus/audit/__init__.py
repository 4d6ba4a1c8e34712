"""The audit trail: the events stream copied into PostgreSQL, and queries over it.

- ``settings``: ``AuditSettings`` (``AGENTBUS_AUDIT_DATABASE_URL``);
- ``schema``: the SQL migrations (``migrations/*.sql``) and ``apply_migrations``;
- ``rows``: one event as one row of ``events`` (``event_row``);
- ``queries``: a task's events, an agent's actions in a time range, approvals.

The archiver service (``services/archiver``) writes the table; ``agentbus audit``
and the gateway read it. psycopg is the optional extra ``agentbus-runtime[audit]``,
imported only where a database is opened.
"""

from agentbus.audit.rows import COLUMNS, INDEXED_FIELDS, EventRow, event_row
from agentbus.audit.settings import AuditSettings

__all__ = ["COLUMNS", "INDEXED_FIELDS", "AuditSettings", "EventRow", "event_row"]
