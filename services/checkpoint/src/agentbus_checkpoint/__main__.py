"""Process entry point: ``agentbus-checkpoint`` / ``python -m agentbus_checkpoint``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_checkpoint.service import serve
from agentbus_checkpoint.settings import CheckpointSettings


def main() -> None:
    """Run the checkpoint service until SIGTERM or SIGINT (settings from the environment)."""
    run_service("checkpoint", serve, CheckpointSettings())


if __name__ == "__main__":
    main()
