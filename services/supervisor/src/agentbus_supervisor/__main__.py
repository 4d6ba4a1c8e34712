"""Entry point: ``agentbus-supervisor`` / ``python -m agentbus_supervisor``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import run_service
from agentbus_supervisor.service import serve
from agentbus_supervisor.settings import SupervisorSettings


def main() -> None:
    """Run this node's supervisor until SIGTERM or SIGINT."""
    settings = SupervisorSettings()
    registry = CollectorRegistry()

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await serve(bus, stop, settings, registry)

    run_service("supervisor", body, metrics_port=settings.metrics_port, registry=registry)


if __name__ == "__main__":
    main()
