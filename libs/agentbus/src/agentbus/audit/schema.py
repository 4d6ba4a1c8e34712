"""The audit trail's schema: plain SQL files applied in order, once each, at start.

``migrations/NNNN_<name>.sql`` are applied in name order inside one transaction that
holds an advisory lock, so several archivers starting together apply each once; the
table ``audit_migrations`` records what was applied. Every file is also written to be
idempotent (``IF NOT EXISTS``).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # psycopg is the optional ``audit`` extra
    from psycopg import AsyncConnection

MIGRATIONS_LOCK = 0x61756469  # "audi": pg_advisory_xact_lock key of the migrations
"""Advisory lock key held while migrations run."""


def migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of every migration file, in the order they apply."""
    folder = resources.files("agentbus.audit") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def apply_migrations(conn: AsyncConnection[object]) -> list[str]:
    """Apply the migrations ``conn``'s database lacks; return the names applied.

    Raises:
        psycopg.Error: the database refused a statement (nothing is applied then).
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS audit_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT name FROM audit_migrations")
        done = {str(row[0]) for row in await cur.fetchall()}  # type: ignore[index]
        for name, sql in migrations():
            if name in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO audit_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied
