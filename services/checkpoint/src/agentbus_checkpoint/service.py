"""The checkpoint service: versioned agent state per agent, thread and namespace.

``nats.micro`` service ``checkpoint``, endpoints ``<p>.checkpoint.<verb>.<owner>``
(``<owner>`` = the request's ``agent_id``, escaped into one token; a request for
another owner than the subject's is refused with 403):

======================  =====================  ==============================================
verb                    request                reply
======================  =====================  ==============================================
``put``                 ``PutCheckpoint``      ``CheckpointReply`` (no data); 409 conflict
``get``                 ``GetCheckpoint``      ``CheckpointReply`` (data or data_ref, writes)
``put_writes``          ``PutWrites``          ``WritesReply``
``list``                ``ListCheckpoints``    ``CheckpointsReply`` (newest first, no data)
``threads``             ``ListThreads``        ``ThreadsReply``
``fork``                ``ForkCheckpoint``     ``CheckpointReply`` (no data)
``delete``              ``DeleteThread``       ``CheckpointsDeleted``
``delete_checkpoints``  ``DeleteCheckpoints``  ``CheckpointsDeleted`` (versions by id)
``prune``               ``PruneCheckpoints``   ``CheckpointsDeleted``
``owners`` (no owner)   ``ListOwners``         ``OwnersReply`` (agent ids holding threads)
======================  =====================  ==============================================

Storage rules are in ``agentbus_checkpoint.store``, pending writes in
``agentbus_checkpoint.writes``, history and retention in
``agentbus_checkpoint.housekeeping``, deleting versions by id in
``agentbus_checkpoint.deletes``, the key layout in ``agentbus_checkpoint.keys``.
The service keeps no state in memory but a cache of heads that every write checks by
compare-and-set (``agentbus_checkpoint.head``), so any number of instances can serve (a
put is committed by one create-only record, ``agentbus_checkpoint.commit``); the retention
sweep and the orphan sweep (``agentbus_checkpoint.orphans``) run on the one instance
holding the KV lease ``checkpoint-retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.kv.lease import KvLease
from agentbus.messages import (
    CheckpointReply,
    CheckpointsDeleted,
    CheckpointsReply,
    DeleteCheckpoints,
    DeleteThread,
    ForkCheckpoint,
    GetCheckpoint,
    ListCheckpoints,
    ListOwners,
    ListThreads,
    OwnersReply,
    PruneCheckpoints,
    PutCheckpoint,
    PutWrites,
    ThreadsReply,
    WritesReply,
)
from agentbus.service import MicroService, ServiceMetrics
from agentbus_checkpoint.deletes import VersionDeletes
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.orphans import OrphanSweep
from agentbus_checkpoint.settings import CheckpointSettings
from agentbus_checkpoint.store import CheckpointStore
from agentbus_checkpoint.writes import PendingWrites

OwnedRequest = (
    PutCheckpoint
    | GetCheckpoint
    | PutWrites
    | ListCheckpoints
    | ListThreads
    | ForkCheckpoint
    | DeleteThread
    | DeleteCheckpoints
    | PruneCheckpoints
)

SERVICE = "checkpoint"


def _owner(req: OwnedRequest) -> str:
    """The owner a request is for: its ``agent_id`` (the subject's last token)."""
    return req.agent_id


SWEEP_LEASE = "checkpoint-retention"


async def serve(
    bus: Bus, stop: asyncio.Event, settings: CheckpointSettings, registry: CollectorRegistry
) -> None:
    """Serve the checkpoint endpoints until ``stop`` is set, then unregister."""
    service_metrics = ServiceMetrics(SERVICE, registry)
    store = CheckpointStore(bus, settings, CheckpointMetrics(registry))
    house = Housekeeping(store)
    orphans = OrphanSweep(house)
    writes = PendingWrites(store)
    deletes = VersionDeletes(house)
    # nats-py runs one subscription's handlers one at a time: several micro instances
    # in one process (one queue group) let requests run concurrently.
    micros = [
        MicroService(bus, SERVICE, service_metrics, description="agentbus checkpoints")
        for _ in range(settings.concurrency)
    ]

    async def put(req: PutCheckpoint) -> CheckpointReply:
        record, head = await store.put(req)
        tk = store.keys(req.agent_id, req.thread_id, req.namespace)
        try:
            await house.apply_retention(tk, head=head)
        except Exception as exc:  # the put stands; the next put or sweep retries
            logger.warning("retention after put failed", thread=tk.prefix, error=repr(exc))
        return CheckpointReply(checkpoint=record)

    async def get(req: GetCheckpoint) -> CheckpointReply:
        return CheckpointReply(checkpoint=await store.get(req))

    async def put_writes(req: PutWrites) -> WritesReply:
        return WritesReply(writes_count=await writes.put(req))

    async def list_(req: ListCheckpoints) -> CheckpointsReply:
        return await house.history(req)

    async def threads(req: ListThreads) -> ThreadsReply:
        return await house.threads(req)

    async def owners(req: ListOwners) -> OwnersReply:
        return await house.owners(req)

    async def fork(req: ForkCheckpoint) -> CheckpointReply:
        record = await house.fork(req)
        return CheckpointReply(checkpoint=msgspec.structs.replace(record, data=b""))

    async def delete(req: DeleteThread) -> CheckpointsDeleted:
        return CheckpointsDeleted(deleted_count=await house.delete_thread(req))

    async def delete_checkpoints(req: DeleteCheckpoints) -> CheckpointsDeleted:
        return CheckpointsDeleted(deleted_count=await deletes.delete(req))

    async def prune(req: PruneCheckpoints) -> CheckpointsDeleted:
        return CheckpointsDeleted(deleted_count=await house.prune(req))

    for micro in micros:
        await micro.start()
    lease_stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    try:
        for micro in micros:
            await micro.endpoint("put", PutCheckpoint, put, owner=_owner)
            await micro.endpoint("get", GetCheckpoint, get, owner=_owner)
            await micro.endpoint("put_writes", PutWrites, put_writes, owner=_owner)
            await micro.endpoint("list", ListCheckpoints, list_, owner=_owner)
            await micro.endpoint("threads", ListThreads, threads, owner=_owner)
            await micro.endpoint("owners", ListOwners, owners)
            await micro.endpoint("fork", ForkCheckpoint, fork, owner=_owner)
            await micro.endpoint("delete", DeleteThread, delete, owner=_owner)
            await micro.endpoint(
                "delete_checkpoints", DeleteCheckpoints, delete_checkpoints, owner=_owner
            )
            await micro.endpoint("prune", PruneCheckpoints, prune, owner=_owner)
        if settings.sweep_interval_s > 0:
            lease = KvLease(bus, SWEEP_LEASE, holder=f"checkpoint-{uuid.uuid4().hex[:8]}")
            background.append(asyncio.create_task(lease.run(lease_stop)))
            background.append(asyncio.create_task(_sweeps(house, orphans, lease, stop, settings)))
        logger.info("checkpoint serving", prefix=bus.names.prefix)
        await stop.wait()
    finally:
        lease_stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        for micro in micros:
            await micro.stop()


async def _sweeps(
    house: Housekeeping,
    orphans: OrphanSweep,
    lease: KvLease,
    stop: asyncio.Event,
    settings: CheckpointSettings,
) -> None:
    """Every ``sweep_interval_s``, if we hold the lease: retention, then orphans.

    Applies every thread's retention, then deletes orphan objects
    (``agentbus_checkpoint.orphans``).
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.sweep_interval_s)
        for kind, sweep in (("retention", house.sweep), ("orphan", orphans.sweep)):
            if stop.is_set() or not lease.held:
                break
            try:
                deleted = await sweep()
                logger.info("checkpoint sweep", kind=kind, deleted=deleted)
            except Exception as exc:
                logger.warning("checkpoint sweep failed", kind=kind, error=repr(exc))
