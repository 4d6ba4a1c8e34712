"""Settings of the registry service.

Precedence: explicit keyword argument, then environment (``REGISTRY_*``), then the
default. Build them in ``main()`` (or a test) and pass them down.
"""

from __future__ import annotations

from pydantic import PositiveFloat
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentbus.bus import REGISTRY_TTL_S


class RegistrySettings(BaseSettings):
    """How the registry judges liveness and announces joins.

    Env: ``REGISTRY_*`` (e.g. ``REGISTRY_METRICS_PORT=9101``).
    """

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", frozen=True, extra="ignore")

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` HTTP server; None or 0 disables it."""
    stale_after_s: PositiveFloat = REGISTRY_TTL_S
    """An entry whose last heartbeat is older than this is not listed, even before its
    KV expiry marker arrives (the bucket TTL, 10 s)."""
    replay_announce_window_s: PositiveFloat = 120.0
    """On start, entries found in KV are announced as ``joined`` only if they started
    less than this long ago (the events stream's duplicate window, so a restarted or
    replicated registry does not repeat old joins)."""
    ready_timeout_s: PositiveFloat = 10.0
    """How long ``serve`` waits for the initial KV replay before serving anyway."""
    gauge_refresh_s: PositiveFloat = 1.0
    """Interval of the gauge refresh (entries go stale without a KV change)."""
