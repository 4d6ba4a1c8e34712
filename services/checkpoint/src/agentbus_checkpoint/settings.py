"""Settings of the checkpoint service.

Precedence: explicit keyword argument, then environment (``CHECKPOINT_*``), then the
default. Build them in ``main()`` (or a test) and pass them down.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CheckpointSettings(BaseSettings):
    """Where checkpoint data is stored. Env: ``CHECKPOINT_*``."""

    model_config = SettingsConfigDict(env_prefix="CHECKPOINT_", frozen=True, extra="ignore")

    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` HTTP server; None or 0 disables it."""
    inline_max_bytes: Annotated[int, Field(ge=0, le=640 * 1024)] = 512 * 1024
    """Checkpoint data up to this size is stored inline in the KV record; larger data
    goes to the Object Store. At most 640 KiB: the record carries the data base64
    encoded (4/3 of its size) and must fit the 1 MiB NATS payload limit."""
    max_id_chars: Annotated[int, Field(ge=1, le=1024)] = 256
    """Longest accepted ``agent_id`` or ``thread_id``."""
