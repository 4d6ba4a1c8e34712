"""Gateway settings.

Precedence: explicit keyword argument, then environment (``GATEWAY_*``), then the
default. Build them in ``main()`` and pass them down; never at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """HTTP gateway for callers outside the bus. Env: ``GATEWAY_*``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP server listens on (``0.0.0.0`` in a container)."""
    port: int = 8080
    """TCP port of the HTTP server; ``0`` picks a free port (logged at start)."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) of the HTTPS server; set with ``tls_key_file``, the
    gateway serves HTTPS only (``agentbus auth tls`` makes a local one)."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    metrics_port: int | None = None
    """Separate Prometheus port, served without a token (bind it where only scrapers
    reach it); unused by default. The app's own ``/metrics`` needs ``metrics:read``."""
    max_wait_s: PositiveFloat = 60.0
    """Upper bound of ``GET /v1/tasks/{id}?wait_s=``; larger values are clamped."""
    shutdown_grace_s: PositiveFloat = 5.0
    """On stop, how long in-flight HTTP requests may take before they are cancelled."""
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    """Largest request body accepted, bytes; larger ones get 413 ``too_large``."""
    allowed_hosts: list[str] = ["127.0.0.1", "localhost", "[::1]", "gateway"]
    """Hosts (``Host`` header without its port) the gateway answers; others get 400.

    ``*`` allows any host, ``*.example.com`` any subdomain. The defaults serve the
    compose stack (published on ``127.0.0.1:8080``, ``gateway`` inside its network).
    Env: a JSON list, e.g. ``GATEWAY_ALLOWED_HOSTS='["api.example.com"]'``.
    """
    allowed_origins: list[str] = []
    """Browser origins (``scheme://host[:port]``) allowed besides the gateway's own.

    A request whose ``Origin`` is another site, or whose ``Sec-Fetch-Site`` is
    ``cross-site``/``same-site`` without such an origin, gets 403.
    """
    auth_required: bool = True
    """Whether every ``/v1`` route and ``/metrics`` needs ``Authorization: Bearer <token>``
    (``agentbus tokens create``). Off: no token is asked for or checked, and nothing is
    rate limited; only for a gateway no one else can reach."""
    rate_limit_requests: NonNegativeInt = 200
    """Requests one token may make in any ``rate_limit_window_s`` (a moving window): the
    burst; the sustained rate is this over the window. More get 429 with ``Retry-After``.
    0: no limit."""
    rate_limit_window_s: PositiveInt = 10
    """The moving window of ``rate_limit_requests``, whole seconds."""
    sse_keepalive_s: PositiveFloat = 15.0
    """An event stream that sent nothing for this long sends a ``: keep-alive`` comment."""
    sse_retry_ms: PositiveInt = 2000
    """``retry:`` sent at the start of each event stream: a browser's reconnect delay."""
    sse_batch: PositiveInt = 32
    """Events one stream fetches at a time: the most it holds in memory for a client."""
    sse_send_timeout_s: PositiveFloat = 30.0
    """A client that takes no data for this long (its buffers are full) is cut off."""
    sse_final_grace_s: PositiveFloat = 5.0
    """How long the final ``event: error`` of a cut-off client may take to go out."""
    sse_max_lag_events: PositiveInt = 100_000
    """A client more events behind the stream than this ..."""
    sse_max_lag_s: PositiveFloat = 120.0
    """... for this long is cut off (``event: error``, ``lagging``)."""
    sse_max_duration_s: NonNegativeFloat = 0.0
    """An event stream open this long ends (``event: error``; the client resumes, maybe
    on another gateway instance). 0: no limit."""
    sse_max_streams: NonNegativeInt = 1000
    """Most event streams open at once; more get 503. 0: no cap."""
    sse_max_streams_per_token: NonNegativeInt = 20
    """Most event streams one token may have open; more get 429. 0: no cap."""
