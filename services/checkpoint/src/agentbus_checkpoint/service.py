"""The checkpoint service: versioned agent state per agent and thread.

``nats.micro`` service ``checkpoint``:

* ``<p>.checkpoint.put``: ``PutCheckpoint`` → ``CheckpointReply`` (the stored
  version without its data: ``data`` is empty, ``data_ref`` set if the data went to
  the Object Store, ``sha256`` identifies it; 409 ``ConflictError`` on a stale
  ``parent_id``);
* ``<p>.checkpoint.get``: ``GetCheckpoint`` → ``CheckpointReply`` (latest, or by id;
  404 ``NotFoundError``; 400 ``ContractError`` for a corrupted checkpoint).

Storage rules are in ``agentbus_checkpoint.store``, the key layout in
``agentbus_checkpoint.keys``. The service keeps no state in memory, so any number
of instances can serve (writes are compare-and-set on the thread head).
"""

from __future__ import annotations

import asyncio

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import CheckpointReply, GetCheckpoint, PutCheckpoint
from agentbus.service import MicroService, ServiceMetrics
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.settings import CheckpointSettings
from agentbus_checkpoint.store import CheckpointStore

SERVICE = "checkpoint"


async def serve(
    bus: Bus, stop: asyncio.Event, settings: CheckpointSettings, registry: CollectorRegistry
) -> None:
    """Serve ``put`` and ``get`` until ``stop`` is set, then unregister."""
    service_metrics = ServiceMetrics(SERVICE, registry)
    store = CheckpointStore(bus, settings, CheckpointMetrics(registry))
    micro = MicroService(bus, SERVICE, service_metrics, description="agentbus checkpoints")

    async def put(req: PutCheckpoint) -> CheckpointReply:
        record = await store.put(req)
        # The caller has the data: do not send it back (``sha256`` identifies it).
        return CheckpointReply(checkpoint=msgspec.structs.replace(record, data=b""))

    async def get(req: GetCheckpoint) -> CheckpointReply:
        return CheckpointReply(checkpoint=await store.get(req))

    await micro.start()
    try:
        await micro.endpoint("put", PutCheckpoint, put)
        await micro.endpoint("get", GetCheckpoint, get)
        logger.info("checkpoint serving", prefix=bus.names.prefix)
        await stop.wait()
    finally:
        await micro.stop()
