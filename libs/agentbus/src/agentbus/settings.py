"""Settings shared by every agentbus process.

Precedence: explicit keyword argument, then environment (``AGENTBUS_*``), then the
default. Build settings in ``main()`` and pass them down; never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    """How to reach the bus. Env: ``AGENTBUS_*``."""

    model_config = SettingsConfigDict(env_prefix="AGENTBUS_", frozen=True, extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    """Comma-separated NATS server URLs."""
    nats_servers_in_order: bool = False
    """Try the servers of ``nats_url`` in the listed order (first connect and every
    reconnect), e.g. the server on this host first; servers the cluster announces come
    after them. Off: nats-py's random order, which spreads clients over the servers."""
    creds_file: Path | None = None
    """NATS credentials (a ``.creds`` file: user JWT and nkey seed) this process
    connects with; the reply prefix comes from its permissions. None: anonymous, which a
    server with auth on refuses (``docs/operations.md``, "Authentication")."""
    prefix: str = "agentbus"
    """Prefix of every subject, stream and bucket (see ``agentbus.names``)."""
    stream_replicas: Literal["auto"] | Annotated[int, Field(ge=1, le=5)] = "auto"
    """Replicas of every stream, KV bucket and object store the contract creates (R1..R5).
    ``auto``: 3 when the server this process is connected to is in a cluster of three
    or more servers, else 1. Existing ones with fewer replicas are raised to it
    (``agentbus.bus.contract``); a failed raise is logged and shown by
    ``agentbus cluster``."""
    request_timeout_s: PositiveFloat = 5.0
    """Default timeout of a service request."""
    connect_timeout_s: PositiveFloat = 5.0
    """How long the first connect may take; later reconnects retry forever."""
    inline_max_bytes: PositiveInt = 64 * 1024
    """Task inputs/outputs larger than this travel through the Object Store."""
    tls_ca_file: Path | None = None
    """PEM file of the CA that signed the server's certificate (default: the system's
    CAs). Setting any ``tls_*`` file, or a ``tls://`` URL, makes TLS mandatory: a server
    that does not require TLS is refused. ``agentbus auth tls DIR`` makes local ones."""
    tls_cert_file: Path | None = None
    """PEM client certificate, for a server that verifies clients (mutual TLS)."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file`` (omit when that file holds the key too)."""
    log_level: str = "INFO"
    log_json: bool = False
    """Write logs as one JSON object per line (for containers)."""

    # Stream limits, applied by every service's ``Bus.ensure()`` on create and on
    # existing streams (set them alike on every service). 0 = no limit.
    events_max_age_s: NonNegativeFloat = 7 * 24 * 3600.0
    """Events (``<P>_EVENTS``: task history, audit trail, SSE replay) kept this long."""
    events_max_bytes: NonNegativeInt = 1024**3
    """Events kept at most, in bytes: the oldest go first."""
    logs_max_age_s: NonNegativeFloat = 24 * 3600.0
    """Container output (``<P>_LOGS``) kept this long."""
    logs_max_bytes: NonNegativeInt = 256 * 1024**2
    """Container output kept at most, in bytes: the oldest lines go first."""
    topics_max_age_s: NonNegativeFloat = 7 * 24 * 3600.0
    """Agent events on topics (``<P>_TOPICS``) kept this long: how far back a
    subscription can replay."""
    topics_max_bytes: NonNegativeInt = 1024**3
    """Agent events kept at most, in bytes: the oldest go first."""
    results_max_age_s: NonNegativeFloat = 7 * 24 * 3600.0
    """Agent reports (``<P>_RESULTS``) the scheduler has not applied are dropped after
    this long (a task record lives as long, ``TASK_RECORD_TTL_S``)."""
    results_max_bytes: NonNegativeInt = 256 * 1024**2
    """Unapplied agent reports kept at most, in bytes; when full, new reports are
    refused (the agent's publish fails and the task is redelivered), never dropped."""
    inbox_max_age_s: PositiveFloat = 7 * 24 * 3600.0
    """Longest TTL of a direct message (``<P>_INBOX``): a ``send`` asking for more is
    refused; also the inbox consumer's inactive threshold."""
    inbox_max_bytes: NonNegativeInt = 1024**3
    """Unread direct messages and receipts kept at most, in bytes; when full, new
    messages are refused (the ``send`` fails), never dropped."""
    inbox_receipt_ttl_s: PositiveFloat = 24 * 3600.0
    """How long a ``MessageReceipt`` stays readable (``message_outcome``), seconds."""


class AgentSettings(BaseSettings):
    """Identity and behaviour of one agent process. Env: ``AGENTBUS_AGENT_*``.

    A supervisor sets ``agent_id``, ``node_id``, ``deployment`` and ``replica`` for the
    replicas it starts; an agent started by hand gets a random id.
    """

    model_config = SettingsConfigDict(env_prefix="AGENTBUS_AGENT_", frozen=True, extra="ignore")

    agent_id: str | None = Field(
        default=None, validation_alias=AliasChoices("agent_id", "AGENTBUS_AGENT_ID")
    )
    """Env ``AGENTBUS_AGENT_ID``; a random ``<name>-<hex>`` when unset."""
    node_id: str | None = None
    deployment: str | None = None
    replica: int | None = None
    capabilities: str | None = None
    """Comma-separated capabilities overriding the agent's own declaration."""
    max_concurrency: PositiveInt | None = None
    """Tasks handled at once by this agent (default: the agent's declaration)."""
    heartbeat_s: PositiveFloat = 2.0
    """Interval between registry heartbeats; the entry expires after the registry TTL."""
    lease_s: PositiveFloat = 30.0
    """AckWait of the capability consumers: a task's lease. Renewed every lease/3."""
    started_report_delay_s: NonNegativeFloat = 0.05
    """``TaskStarted`` is reported only for a handler still running after this long
    (at most lease/3); a shorter attempt is known from its ``TaskResult`` alone (one
    report and one record write less per task). 0: always report it."""
    fetch_timeout_s: PositiveFloat = 2.0
    """How long to wait for the answer to one (no-wait) pull request."""
    events_pull_s: PositiveFloat = 10.0
    """How long one pull request of an event subscription waits for events before it is
    sent again (one per consumer: nine per subscription). An event arriving meanwhile
    is delivered at once; longer means fewer idle requests on the server."""
    rescan_s: PositiveFloat = 1.0
    """How often an agent checks its task subjects for messages no notice announced
    (redeliveries after a nak delay or a lapsed lease) while work is about: a notice
    heard, a task pulled, or a message found in the last rescan."""
    rescan_max_s: PositiveFloat = 30.0
    """The longest interval between two such checks: while they find every task subject
    empty, the interval doubles from ``rescan_s`` up to this, capped at ``lease_s`` (a
    message held that long is seen before it could come back unannounced)."""
    stop_grace_s: PositiveFloat = 10.0
    """On SIGTERM, how long in-flight tasks may run before they are returned."""
    checkpoint_interval_s: PositiveFloat | None = None
    """Save ``agent.state`` (if changed) and each running task's pending state
    (``ctx.checkpoint.update``) this often; None: only on explicit saves, failure, stop."""
    message_max_deliveries: PositiveInt = 5
    """Deliveries of a direct message whose handler raises, before it is terminated
    with a ``failed`` receipt and an ``ErrorEvent``."""
    message_ack_wait_s: PositiveFloat = 30.0
    """AckWait of the inbox consumer; renewed every third of it while a handler runs."""
    message_concurrency: PositiveInt = 4
    """Direct messages handled at once (the inbox consumer's ``max_ack_pending``)."""
