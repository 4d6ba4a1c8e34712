"""Settings of the archiver.

Precedence: explicit keyword argument, then environment (``ARCHIVER_*``), then the
default. The database URL is ``AGENTBUS_AUDIT_DATABASE_URL``, the variable
``agentbus audit`` reads too (``agentbus.audit.AuditSettings``).
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentbus.audit import AuditSettings


class ArchiverSettings(BaseSettings):
    """How the archiver batches, retries and prunes. Env: ``ARCHIVER_*``."""

    model_config = SettingsConfigDict(
        env_prefix="ARCHIVER_", frozen=True, extra="ignore", populate_by_name=True
    )

    database_url: SecretStr | None = Field(
        default=None, validation_alias="AGENTBUS_AUDIT_DATABASE_URL"
    )
    """Env ``AGENTBUS_AUDIT_DATABASE_URL``: libpq URL of the audit database (required)."""
    connect_timeout_s: PositiveFloat = 5.0
    """How long one connection attempt to the database may take."""

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` HTTP server; None or 0 disables it."""
    batch_size: int = Field(default=256, ge=1, le=10_000)
    """Events fetched, written in one transaction and then acked, at most."""
    fetch_timeout_s: PositiveFloat = 1.0
    """How long one fetch waits for the first event of a batch."""
    ack_wait_s: PositiveFloat = 60.0
    """Ack wait of the consumer (on creation): an event fetched by an archiver that
    died unacked is delivered again after this long. A batch waiting for the database
    keeps its lease (``in_progress``) while it retries."""
    retry_initial_s: PositiveFloat = 0.2
    """First delay of the database retries (exponential with jitter, then capped)."""
    retry_max_s: PositiveFloat = 10.0
    """Longest delay between two database retries."""
    retention_days: PositiveFloat | None = None
    """Delete rows older than this many days (by ``time``); None keeps everything."""
    retention_interval_s: PositiveFloat = 3600.0
    """How often the retention sweep runs (it also runs once at start)."""
    max_ack_pending: PositiveInt = 4096
    """Consumer's cap on delivered, unacked events (on creation)."""

    def audit(self) -> AuditSettings:
        """The audit database settings these settings name."""
        return AuditSettings(
            database_url=self.database_url, connect_timeout_s=self.connect_timeout_s
        )
