"""Settings of the checkpoint service.

Precedence: explicit keyword argument, then environment (``CHECKPOINT_*``), then the
default. Build them in ``main()`` (or a test) and pass them down.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class CheckpointSettings(BaseSettings):
    """Where checkpoint data is stored and how long it is kept. Env: ``CHECKPOINT_*``.

    The size limits assume the default 1 MiB NATS ``max_payload``: a ``get`` reply
    carries the inline data base64 encoded (4/3 of its size) plus the pending writes,
    and must fit one message.
    """

    model_config = SettingsConfigDict(env_prefix="CHECKPOINT_", frozen=True, extra="ignore")

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` HTTP server; None or 0 disables it."""
    inline_max_bytes: Annotated[int, Field(ge=0, le=384 * 1024)] = 256 * 1024
    """Checkpoint data up to this size is stored in KV; larger data goes to the Object
    Store ``<p>_checkpoint_blobs``."""
    write_inline_max_bytes: Annotated[int, Field(ge=0, le=64 * 1024)] = 8 * 1024
    """A pending write's value up to this size is stored in KV, larger in the Object Store."""
    writes_max_bytes: Annotated[int, Field(ge=1024, le=512 * 1024)] = 512 * 1024
    """Largest encoded ``CheckpointWrites`` of one version (one KV value)."""
    max_id_chars: Annotated[int, Field(ge=1, le=1024)] = 256
    """Longest accepted ``agent_id``, ``thread_id`` or namespace."""
    keep_last: PositiveInt | None = None
    """Default retention of threads that set none: keep this many versions (None: all)."""
    max_age_s: PositiveFloat | None = None
    """Default retention of threads that set none: drop versions older than this."""
    sweep_interval_s: Annotated[float, Field(ge=0)] = 300.0
    """How often one instance (KV lease ``checkpoint-retention``) applies every thread's
    retention, so idle threads age out too, and deletes orphan objects; 0 disables both."""
    orphan_grace_s: PositiveFloat = 3600.0
    """An object of ``<p>_checkpoint_blobs`` that no version references is deleted by
    the sweep once it is this old (time the server stored it): longer than any gap
    between an upload and its put. A put refuses a ``data_ref`` older than half this."""
    orphan_sweep_max: Annotated[int, Field(ge=1)] = 1000
    """Orphans deleted per sweep at most (the rest go in the next sweeps)."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8
    """Requests handled at once by this process (``nats.micro`` instances in one queue
    group; ``nats micro ls`` lists each)."""
    put_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    """Compare-and-set rounds of a put whose head moved for a reason other than a
    competing put (retention bookkeeping), or of a branch put, before giving up."""
