"""``agentbus-scheduler`` / ``python -m agentbus_scheduler``: run the scheduler."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.service import run_service
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings


def main() -> None:
    """Build the settings from the environment and run until SIGTERM or SIGINT."""
    settings = SchedulerSettings()
    registry = CollectorRegistry()

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await serve(bus, stop, settings, registry)

    run_service("scheduler", body, metrics_port=settings.metrics_port, registry=registry)


if __name__ == "__main__":
    main()
