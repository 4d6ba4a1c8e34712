"""Where the audit trail lives: shared by the archiver and ``agentbus audit``.

Precedence: explicit keyword argument, then environment (``AGENTBUS_AUDIT_*``), then
the default.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuditSettings(BaseSettings):
    """The audit database. Env: ``AGENTBUS_AUDIT_*``."""

    model_config = SettingsConfigDict(env_prefix="AGENTBUS_AUDIT_", frozen=True, extra="ignore")

    database_url: SecretStr | None = None
    """libpq connection URL of the audit database, e.g.
    ``postgresql://agentbus@127.0.0.1:5432/agentbus`` (a password, if any, inside).
    None: no audit trail (the archiver refuses to start, ``agentbus audit`` fails)."""
    connect_timeout_s: float = 5.0
    """How long one connection attempt to the database may take."""
