"""The ``agentbus`` command: submit tasks, inspect the fleet, run a stack or the demo.

Every command that talks to a stack takes ``--nats-url`` and ``--prefix`` (env
``AGENTBUS_NATS_URL``/``AGENTBUS_PREFIX``); without them it uses the running embedded
stack (``agentbus embedded``), else ``nats://127.0.0.1:4222`` and ``agentbus``.
Credentials: ``AGENTBUS_CREDS_FILE``, else the embedded stack's operator creds (from
its state file), else none (``agentbus.cli.connect``).
Expected failures print one line on stderr and exit non-zero: 2 for invalid input
(``ContractError``), 1 for the rest (not found, unavailable, timeout, ...).
"""

from __future__ import annotations

import sys

from loguru import logger

from agentbus.cli import (
    approvals,
    auth,
    cluster,
    events,
    fleet,
    observe,
    stack,
    tasks,
    tokens,
    traces,
)
from agentbus.cli.common import app

__all__ = [
    "app",
    "approvals",
    "auth",
    "cluster",
    "events",
    "fleet",
    "main",
    "observe",
    "stack",
    "tasks",
    "tokens",
    "traces",
]


def main() -> None:
    """Console-script entry point."""
    logger.remove()
    logger.add(sys.stderr, level="ERROR", format="{level}: {message}")
    app()
