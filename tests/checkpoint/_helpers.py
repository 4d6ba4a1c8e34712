"""Helpers of the checkpoint tests: the service in-process and its metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.state.checkpoints import CheckpointClient
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings
from tests._helpers import answers, serving


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
