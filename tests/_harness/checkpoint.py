"""The checkpoint service in-process for the tests, its metrics, its blob store, an
orphan sweep on a store of its own, and a bare store with the requests the store tests
send it (agent ``a``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats.js.errors
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.messages import DeleteThread, PutCheckpoint
from agentbus.state.checkpoints import CheckpointClient
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.metrics import CheckpointMetrics
from agentbus_checkpoint.orphans import OrphanSweep
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings
from agentbus_checkpoint.store import CheckpointStore
from tests._harness.polling import answers
from tests._harness.services import serving


@dataclass
class Service:
    bus: Bus
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def client(self, agent_id: str = "agent-1") -> CheckpointClient:
        return CheckpointClient(self.bus, agent_id)


@asynccontextmanager
async def running_checkpoint(
    bus: Bus, settings: CheckpointSettings | None = None
) -> AsyncIterator[Service]:
    """The checkpoint service in-process on ``bus``; ready on entry."""
    service = Service(bus, CollectorRegistry())
    async with serving(
        lambda stop: serve(bus, stop, settings or CheckpointSettings(), service.registry),
        lambda: answers(lambda: service.client("probe").get("probe")),
        what="checkpoint service",
        stop_timeout_s=10,
    ):
        yield service


async def blob_names(bus: Bus) -> set[str]:
    """Names of the objects in the checkpoint blob store (empty when it holds none)."""
    obs = await bus.object_store(bus.names.checkpoint_blobs_bucket)
    try:
        return {o.name or "" for o in await obs.list(ignore_deletes=True) if not o.deleted}
    except nats.js.errors.NotFoundError:  # nats-py raises on an empty store
        return set()


GRACE_S = 0.5
"""The tests' tiny grace; objects are aged past it by waiting ``AGED_S`` (setup only)."""
AGED_S = 0.7


def sweeper(bus: Bus, grace_s: float, sweep_max: int = 1000) -> tuple[OrphanSweep, Service]:
    """An orphan sweep on its own store; the ``Service`` gives its metrics."""
    registry = CollectorRegistry()
    settings = CheckpointSettings(orphan_grace_s=grace_s, orphan_sweep_max=sweep_max)
    store = CheckpointStore(bus, settings, CheckpointMetrics(registry))
    return OrphanSweep(Housekeeping(store)), Service(bus, registry)


def bare_store(bus: Bus) -> CheckpointStore:
    """A checkpoint store on ``bus`` with default settings (one service instance)."""
    return CheckpointStore(bus, CheckpointSettings(), CheckpointMetrics(CollectorRegistry()))


def put_request(thread: str, data: bytes, parent_id: str | None = None) -> PutCheckpoint:
    """A put of agent ``a``'s ``thread`` on ``parent_id``."""
    return PutCheckpoint(agent_id="a", thread_id=thread, data=data, parent_id=parent_id)


async def delete_thread(store: CheckpointStore, thread: str) -> None:
    """Delete agent ``a``'s ``thread`` as ``DeleteThread`` does."""
    await Housekeeping(store).delete_thread(DeleteThread(agent_id="a", thread_id=thread))
