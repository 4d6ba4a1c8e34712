"""The archiver service: the events stream into the PostgreSQL audit trail.

It runs the archive loop (``archive.EventArchiver``) and the retention sweep
(``retention``), and registers the ``nats.micro`` service ``archiver`` (no endpoints:
``$SRV.PING``/``INFO``/``STATS`` answer, so ``agentbus.service.health`` and
``nats micro ls`` see it). Any number of instances may run: they share the durable
consumer, and the table's key makes their inserts idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import MicroService, ServiceMetrics
from agentbus_archiver.archive import EventArchiver
from agentbus_archiver.database import Database
from agentbus_archiver.metrics import ArchiverMetrics
from agentbus_archiver.retention import run_retention
from agentbus_archiver.settings import ArchiverSettings

SERVICE = "archiver"


async def serve(
    bus: Bus, stop: asyncio.Event, settings: ArchiverSettings, registry: CollectorRegistry
) -> None:
    """Archive events until ``stop`` is set, then give back the batch in hand and return.

    Raises:
        ValueError: ``settings`` names no database (``AGENTBUS_AUDIT_DATABASE_URL``).
    """
    service_metrics = ServiceMetrics(SERVICE, registry)
    metrics = ArchiverMetrics(registry)
    db = Database(settings.audit())
    archiver = EventArchiver(
        bus, settings, db, metrics=metrics, service_metrics=service_metrics, stop=stop
    )
    micro = MicroService(bus, SERVICE, service_metrics, description="agentbus audit archiver")
    await micro.start()
    logger.info("archiver serving", prefix=bus.names.prefix, stream=bus.names.events_stream)
    tasks = [
        asyncio.create_task(archiver.run(), name="archive"),
        asyncio.create_task(run_retention(settings, metrics, stop), name="retention"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # an unexpected error ends the process (restarted by its runner)
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await micro.stop()
        await db.close()
