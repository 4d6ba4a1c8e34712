"""Gateway settings.

Precedence: explicit keyword argument, then environment (``GATEWAY_*``), then the
default. Build them in ``main()`` and pass them down; never at import time.
"""

from __future__ import annotations

from pydantic import PositiveFloat
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """HTTP gateway for callers outside the bus. Env: ``GATEWAY_*``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP server listens on (``0.0.0.0`` in a container)."""
    port: int = 8080
    """TCP port of the HTTP server; ``0`` picks a free port (logged at start)."""
    metrics_port: int | None = None
    """Separate Prometheus port; unused by default, ``/metrics`` is served by the app."""
    max_wait_s: PositiveFloat = 60.0
    """Upper bound of ``GET /v1/tasks/{id}?wait_s=``; larger values are clamped."""
    shutdown_grace_s: PositiveFloat = 5.0
    """On stop, how long in-flight HTTP requests may take before they are cancelled."""
