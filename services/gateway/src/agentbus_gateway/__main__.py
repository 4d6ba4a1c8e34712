"""``agentbus-gateway`` / ``python -m agentbus_gateway``: run the HTTP gateway."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import run_service
from agentbus_gateway.service import serve
from agentbus_gateway.settings import GatewaySettings


def main() -> None:
    """Build settings from the environment and run the gateway until SIGTERM/SIGINT."""
    settings = GatewaySettings()
    registry = CollectorRegistry()

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await serve(bus, stop, settings, registry)

    run_service("gateway", body, metrics_port=settings.metrics_port, registry=registry)


if __name__ == "__main__":
    main()
