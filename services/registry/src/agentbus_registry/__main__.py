"""Process entry point: ``agentbus-registry`` / ``python -m agentbus_registry``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_registry.service import serve
from agentbus_registry.settings import RegistrySettings


def main() -> None:
    """Run the registry service until SIGTERM or SIGINT (settings from the environment)."""
    run_service("registry", serve, RegistrySettings())


if __name__ == "__main__":
    main()
