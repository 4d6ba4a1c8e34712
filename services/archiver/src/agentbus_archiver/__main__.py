"""Process entry point: ``agentbus-archiver`` / ``python -m agentbus_archiver``."""

from __future__ import annotations

import sys

from agentbus.service import run_service
from agentbus_archiver.service import serve
from agentbus_archiver.settings import ArchiverSettings

EXIT_NOT_CONFIGURED = 2
"""Exit status when no audit database is configured."""


def main() -> None:
    """Run the archiver until SIGTERM or SIGINT (settings from the environment).

    Exits with ``EXIT_NOT_CONFIGURED`` at once when ``AGENTBUS_AUDIT_DATABASE_URL``
    is not set: there is nothing to archive into.
    """
    settings = ArchiverSettings()
    if settings.database_url is None:
        print(
            "agentbus-archiver: set AGENTBUS_AUDIT_DATABASE_URL to the audit database "
            "(e.g. postgresql://agentbus@127.0.0.1:5432/agentbus)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NOT_CONFIGURED)
    run_service("archiver", serve, settings)


if __name__ == "__main__":
    main()
