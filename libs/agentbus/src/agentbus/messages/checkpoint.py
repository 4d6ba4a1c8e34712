"""Checkpoints: versioned agent state per agent and thread."""

from __future__ import annotations

from datetime import datetime

from agentbus.messages.common import (
    BlobRef,
    Message,
)


class PutCheckpoint(Message, frozen=True, kw_only=True):
    """Command to the checkpoint service (``<p>.checkpoint.put``)."""

    agent_id: str
    thread_id: str
    data: bytes
    parent_id: str | None = None
    metadata: dict[str, str] = {}
    data_ref: BlobRef | None = None
    """A value too large for one request: upload it first with ``blobs.put_blob`` under
    ``checkpoints/sha256/<hex digest>`` and send ``data`` empty with this reference."""


class GetCheckpoint(Message, frozen=True, kw_only=True):
    """Request to the checkpoint service (``<p>.checkpoint.get``): latest or by id."""

    agent_id: str
    thread_id: str
    checkpoint_id: str | None = None


class Checkpoint(Message, frozen=True, kw_only=True):
    """One version of an agent's state on a thread."""

    checkpoint_id: str
    agent_id: str
    thread_id: str
    version: int
    created_at: datetime
    sha256: str
    data: bytes = b""
    data_ref: BlobRef | None = None
    parent_id: str | None = None
    metadata: dict[str, str] = {}


class CheckpointReply(Message, frozen=True, kw_only=True):
    """Reply carrying one checkpoint."""

    checkpoint: Checkpoint


class CheckpointHead(Message, frozen=True, kw_only=True):
    """KV ``<p>_checkpoints`` value at ``<agent>.<thread>.latest``: the thread's head."""

    checkpoint_id: str
    version: int
    updated_at: datetime


MESSAGES: tuple[type[Message], ...] = (
    PutCheckpoint,
    GetCheckpoint,
    Checkpoint,
    CheckpointReply,
    CheckpointHead,
)
