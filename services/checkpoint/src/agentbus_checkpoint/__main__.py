"""Process entry point: ``agentbus-checkpoint`` / ``python -m agentbus_checkpoint``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import run_service
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings


def main() -> None:
    """Run the checkpoint service until SIGTERM or SIGINT."""
    settings = CheckpointSettings()
    registry = CollectorRegistry()

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await serve(bus, stop, settings, registry)

    run_service("checkpoint", body, metrics_port=settings.metrics_port, registry=registry)


if __name__ == "__main__":
    main()
