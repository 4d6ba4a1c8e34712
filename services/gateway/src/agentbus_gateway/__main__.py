"""Process entry point: ``agentbus-gateway`` / ``python -m agentbus_gateway``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_gateway.service import serve
from agentbus_gateway.settings import GatewaySettings


def main() -> None:
    """Run the gateway service until SIGTERM or SIGINT (settings from the environment)."""
    run_service("gateway", serve, GatewaySettings())


if __name__ == "__main__":
    main()
