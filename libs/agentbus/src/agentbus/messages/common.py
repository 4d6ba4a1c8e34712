"""Shared pieces of the wire contract: the base class, identifiers, errors, blob refs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

Token = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
"""A subject-safe identifier: capability, agent id, node id, deployment name."""

TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
TaskId = Annotated[str, msgspec.Meta(pattern=TASK_ID_PATTERN)]
"""A task id: 1-128 characters of ``[A-Za-z0-9_-]``, safe as a subject token and KV key."""

TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired", "dead"]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "cancelled", "expired", "dead"}
)
RuntimeKind = Literal["docker", "process"]
RestartPolicy = Literal["always", "on-failure", "never"]
NULL = msgspec.Raw(b"null")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of every payload on the bus; encodes with ``"type": "<ClassName>"``."""


class ErrorInfo(Message, frozen=True, kw_only=True):
    """Why something failed: the exception type name and a one-line message."""

    error_type: str
    message: str
    retryable: bool = False


class BlobRef(Message, frozen=True, kw_only=True):
    """A value stored in the Object Store instead of inline (over the inline limit)."""

    bucket: str
    name: str
    size_bytes: int
    sha256: str


class Backoff(Message, frozen=True, kw_only=True):
    """Exponential backoff with jitter between retries (tasks) or restarts (replicas).

    Delay before retry ``n`` (1-based): ``min(max_s, initial_s * factor**(n-1))``, then
    "equal jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): a
    uniform draw in ``[d * (1 - jitter), d]``. ``agentbus.retry.backoff_s`` computes it.
    """

    initial_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    max_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5


MESSAGES: tuple[type[Message], ...] = (
    ErrorInfo,
    BlobRef,
    Backoff,
)
