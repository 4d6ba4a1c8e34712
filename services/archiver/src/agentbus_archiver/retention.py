"""The retention sweep: delete audit rows older than ``retention_days``, periodically.

It runs at start and then every ``retention_interval_s`` on a connection of its own;
a failed sweep is logged and counted, and the next one tries again. Several
archivers may sweep at once: a row is deleted once.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from loguru import logger

from agentbus_archiver.database import Database
from agentbus_archiver.metrics import ArchiverMetrics
from agentbus_archiver.settings import ArchiverSettings

SECONDS_PER_DAY = 86_400.0


async def sweep(db: Database, retention_days: float, metrics: ArchiverMetrics) -> int:
    """Delete rows older than ``retention_days``; return how many (0 after a failure)."""
    try:
        deleted = await db.delete_older_than(retention_days * SECONDS_PER_DAY)
    except psycopg.Error as exc:
        await db.reset()
        metrics.database_errors.labels("retention").inc()
        logger.warning("retention sweep failed", error=repr(exc))
        return 0
    metrics.retention_deleted.inc(deleted)
    if deleted:
        logger.info("retention sweep", deleted=deleted, retention_days=retention_days)
    return deleted


async def run_retention(
    settings: ArchiverSettings, metrics: ArchiverMetrics, stop: asyncio.Event
) -> None:
    """Sweep every ``retention_interval_s`` until ``stop``; never without ``retention_days``."""
    if settings.retention_days is None:
        return
    db = Database(settings.audit())
    try:
        while not stop.is_set():
            await sweep(db, settings.retention_days, metrics)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.retention_interval_s)
    finally:
        await db.close()
