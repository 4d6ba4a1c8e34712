"""Process entry point: ``agentbus-registry`` / ``python -m agentbus_registry``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import run_service
from agentbus_registry.service import serve
from agentbus_registry.settings import RegistrySettings


def main() -> None:
    """Run the registry service until SIGTERM or SIGINT."""
    settings = RegistrySettings()
    registry = CollectorRegistry()

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await serve(bus, stop, settings, registry)

    run_service("registry", body, metrics_port=settings.metrics_port, registry=registry)


if __name__ == "__main__":
    main()
