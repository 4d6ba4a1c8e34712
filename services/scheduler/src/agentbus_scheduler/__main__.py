"""Process entry point: ``agentbus-scheduler`` / ``python -m agentbus_scheduler``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings


def main() -> None:
    """Run the scheduler service until SIGTERM or SIGINT (settings from the environment)."""
    run_service("scheduler", serve, SchedulerSettings())


if __name__ == "__main__":
    main()
