"""The archiver's side of PostgreSQL: one connection, batches in one transaction each.

``Database`` keeps one connection and opens a new one after a failure; every
operation that fails raises ``psycopg.Error`` (the caller retries). Migrations are
applied on every new connection (``agentbus.audit.schema``: idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from loguru import logger
from psycopg.rows import TupleRow

from agentbus.audit import COLUMNS, AuditSettings, EventRow
from agentbus.audit.schema import apply_migrations

_TYPES = (
    "bigint",
    "timestamptz",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
)
INSERT_BATCH = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in _TYPES)}) "
    "ON CONFLICT (seq) DO NOTHING"
)
"""One statement for a whole batch: column arrays, unnested; a known seq is skipped."""


class Database:
    """The audit database of ``settings``, reached through one reopened connection."""

    def __init__(self, settings: AuditSettings) -> None:
        if settings.database_url is None:
            raise ValueError("the archiver needs AGENTBUS_AUDIT_DATABASE_URL")
        self._url = settings.database_url.get_secret_value()
        self._connect_timeout_s = max(1, round(settings.connect_timeout_s))
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def connection(self) -> psycopg.AsyncConnection[TupleRow]:
        """The open connection, or a new one with the migrations applied.

        Raises:
            psycopg.Error: the database refused the connection or a migration.
        """
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=self._connect_timeout_s
        )
        try:
            if applied := await apply_migrations(conn):
                logger.info("audit migrations applied", migrations=applied)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def reset(self) -> None:
        """Drop the connection (after a failure); the next operation opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # a dead connection has nothing to close
                logger.debug("closing the audit connection failed", error=repr(exc))

    async def close(self) -> None:
        """Close the connection."""
        await self.reset()

    async def insert(self, rows: Sequence[EventRow]) -> int:
        """Insert ``rows`` in one transaction (committed on return); how many were new.

        Raises:
            psycopg.Error: nothing of ``rows`` is committed then.
        """
        conn = await self.connection()
        columns = list(zip(*(row.values() for row in rows), strict=True))
        async with conn.transaction():
            cur = await conn.execute(INSERT_BATCH, [list(c) for c in columns])
            return max(cur.rowcount, 0)

    async def max_seq(self) -> int:
        """The highest archived sequence, 0 for an empty table.

        Raises:
            psycopg.Error: the query failed.
        """
        conn = await self.connection()
        async with conn.transaction():
            cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM events")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def delete_older_than(self, age_s: float) -> int:
        """Delete rows whose ``time`` is more than ``age_s`` seconds ago; how many.

        Raises:
            psycopg.Error: nothing is deleted then.
        """
        conn = await self.connection()
        async with conn.transaction():
            cur = await conn.execute(
                "DELETE FROM events WHERE time < now() - make_interval(secs => %s)", (age_s,)
            )
            return max(cur.rowcount, 0)
