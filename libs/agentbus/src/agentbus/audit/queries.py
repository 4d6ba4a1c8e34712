"""Questions people ask the audit trail, as SQL over the table ``events``.

Each function takes an open psycopg connection and returns ``EventRow``s (``payload``
as JSON text), oldest first. ``connect`` opens one from ``AuditSettings``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from agentbus.audit.rows import COLUMNS, EventRow
from agentbus.audit.settings import AuditSettings
from agentbus.errors import ContractError, UnavailableError

if TYPE_CHECKING:  # psycopg is the optional ``audit`` extra
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow

_SELECT = "SELECT " + ", ".join(c if c != "payload" else "payload::text" for c in COLUMNS)
APPROVAL_FILTER = "(entity = 'approval' OR kind LIKE 'approval%%')"
"""SQL condition of approval events: entity ``approval``, or a kind ``approval...``."""
DEFAULT_LIMIT = 1000
"""Rows a query returns at most unless told otherwise."""


async def connect(settings: AuditSettings) -> AsyncConnection[TupleRow]:
    """A connection to the audit database of ``settings`` (autocommit, for reads).

    Raises:
        ContractError: no ``database_url`` is configured, or psycopg is not installed.
        UnavailableError: the database did not accept a connection.
    """
    if settings.database_url is None:
        raise ContractError(
            "no audit database configured: set AGENTBUS_AUDIT_DATABASE_URL "
            "(e.g. postgresql://agentbus@127.0.0.1:5432/agentbus)"
        )
    try:
        import psycopg
    except ImportError as exc:
        raise ContractError(
            "the audit trail needs psycopg: install agentbus-runtime[audit]"
        ) from exc
    try:
        return await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(),
            autocommit=True,
            connect_timeout=max(1, round(settings.connect_timeout_s)),
        )
    except psycopg.OperationalError as exc:
        raise UnavailableError(f"audit database unreachable: {exc}".strip()) from exc


def _row(values: tuple[object, ...]) -> EventRow:
    return EventRow(*values)  # type: ignore[arg-type]


async def task_events(
    conn: AsyncConnection[TupleRow], task_id: str, *, limit: int | None = None
) -> list[EventRow]:
    """Every event of task ``task_id``, in stream order (the first ``limit``; None: all)."""
    cur = await conn.execute(
        _SELECT + " FROM events WHERE task_id = %s ORDER BY seq LIMIT %s", (task_id, limit)
    )
    return [_row(r) for r in await cur.fetchall()]


async def agent_events(
    conn: AsyncConnection[TupleRow],
    agent_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[EventRow]:
    """What agent ``agent_id`` did (events naming it) in ``[since, until)``, oldest first."""
    cur = await conn.execute(
        _SELECT + " FROM events WHERE agent_id = %s"
        " AND (%s::timestamptz IS NULL OR time >= %s)"
        " AND (%s::timestamptz IS NULL OR time < %s)"
        " ORDER BY time, seq LIMIT %s",
        (agent_id, since, since, until, until, limit),
    )
    return [_row(r) for r in await cur.fetchall()]


async def approval_events(
    conn: AsyncConnection[TupleRow],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    task_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[EventRow]:
    """Approval requests and decisions (who approved what) in ``[since, until)``."""
    cur = await conn.execute(
        _SELECT + " FROM events WHERE " + APPROVAL_FILTER + ""
        " AND (%s::timestamptz IS NULL OR time >= %s)"
        " AND (%s::timestamptz IS NULL OR time < %s)"
        " AND (%s::text IS NULL OR task_id = %s)"
        " ORDER BY time, seq LIMIT %s",
        (since, since, until, until, task_id, task_id, limit),
    )
    return [_row(r) for r in await cur.fetchall()]
