"""Process entry point: ``agentbus-archiver`` / ``python -m agentbus_archiver``."""

from __future__ import annotations

from agentbus.service import run_service
from agentbus_archiver.service import serve
from agentbus_archiver.settings import ArchiverSettings


def main() -> None:
    """Run the archiver until SIGTERM or SIGINT (settings from the environment)."""
    run_service("archiver", serve, ArchiverSettings())


if __name__ == "__main__":
    main()
