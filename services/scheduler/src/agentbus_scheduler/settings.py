"""Settings of the scheduler service.

Precedence: explicit keyword argument, then environment (``SCHEDULER_*``), then the
default. Build them in ``main()`` (or a test) and pass them down.
"""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_instance_id() -> str:
    """``<hostname>-<pid>-<6 hex>``: unique per process, readable in the lease KV."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SchedulerSettings(BaseSettings):
    """How the scheduler admits tasks, applies results and places replicas.

    Env: ``SCHEDULER_*`` (e.g. ``SCHEDULER_PLACE_INTERVAL_S=2``).
    """

    model_config = SettingsConfigDict(env_prefix="SCHEDULER_", frozen=True, extra="ignore")

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` HTTP server; None or 0 disables it."""
    submit_concurrency: PositiveInt = 128
    """Tasks of one batch submit admitted concurrently (KV write + publish each)."""
    results_batch: PositiveInt = 256
    """Agent reports fetched per pull request from the results stream."""
    results_fetch_timeout_s: PositiveFloat = 1.0
    """Long-poll time of one pull request on the results stream."""
    results_ack_wait_s: PositiveFloat = 5.0
    """AckWait of the results consumer ``scheduler-results``: a report that a scheduler
    fetched and did not ack (it died) is redelivered to another instance after this,
    so a task ends at most this late after a scheduler crash. A live instance renews
    the reports it is still applying (``in_progress`` every third of this), so a slow
    one gets no duplicates."""
    place_interval_s: PositiveFloat = 5.0
    """Placement runs on every deployment/node change and at least this often."""
    ready_timeout_s: PositiveFloat = 10.0
    """How long deploy/delete wait for the initial KV replay before answering 503."""
    instance_id: str = Field(default_factory=default_instance_id)
    """This instance's id (unique per running scheduler): the placement lease holder."""
    placement_lease_ttl_s: int = Field(default=6, ge=2)
    """Lease ``scheduler-placement`` length, whole seconds: a crashed holder's duty
    passes to another instance within about ``ttl * 4/3``; a clean stop hands it over
    at once."""
    deploy_wait_s: PositiveFloat = 5.0
    """On an instance that does not hold the lease: how long deploy/delete/scale wait
    for the holder to place the change before replying with what is placed so far."""
    sweep_interval_s: PositiveFloat = 5.0
    """How often the ``scheduler-sweeps`` lease holder scans the work stream (expired
    deadlines, messages stuck after their last delivery, leftovers of ended tasks)."""
    sweep_max_messages: PositiveInt = 10_000
    """Work-stream messages one sweep reads at most; the next sweep goes on from there."""
    sweep_max_records: PositiveInt = 10_000
    """Task records one heal pass reads at most (``heal``); the next goes on from there."""
    heal_grace_s: PositiveFloat = 30.0
    """A ``queued`` record that never started and whose message is not on the work
    stream (its admission died between the record write and the publish) is healed,
    its message published again, once it is this old."""
    list_max_records: PositiveInt = 10_000
    """Task records one ``list`` request reads at most (statuses other than dead)."""
    unserved_warn_s: PositiveFloat = 60.0
    """A task waiting this long for a capability no live agent serves gets one
    ``task.unserved`` warning event (``<p>.events.task.unserved.<task_id>``)."""
    sweep_lease_ttl_s: int = Field(default=6, ge=2)
    """Lease ``scheduler-sweeps`` length, whole seconds: a crashed holder's sweeps and
    dead-letter moves pass to another instance within about ``ttl * 4/3``."""
