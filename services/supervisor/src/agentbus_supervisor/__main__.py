"""Process entry point: ``agentbus-supervisor`` / ``python -m agentbus_supervisor``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_supervisor.service import serve
from agentbus_supervisor.settings import SupervisorSettings


def main() -> None:
    """Run the supervisor service until SIGTERM or SIGINT (settings from the environment)."""
    run_service("supervisor", serve, SupervisorSettings())


if __name__ == "__main__":
    main()
