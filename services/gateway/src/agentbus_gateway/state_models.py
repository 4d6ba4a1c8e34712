"""HTTP bodies of the checkpoint and trace views (JSON, msgspec Structs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar.params import PathParameter, QueryParameter

from agentbus.messages import Checkpoint, CheckpointOrigin, ThreadInfo, TraceKind
from agentbus_gateway.models import TOKEN_PATTERN

_NAME_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
OwnerPath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=256,
        pattern=_NAME_PATTERN,
        description="Checkpoint owner (agent id): 1-256 characters, no / or control characters",
    ),
]
ThreadPath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=256,
        pattern=_NAME_PATTERN,
        description="Thread id: 1-256 characters, no / or control characters",
    ),
]
NamespaceParam = Annotated[
    str,
    QueryParameter(
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="Namespace of the thread (default: the root, empty)",
    ),
]
KindPath = Annotated[
    str,
    PathParameter(pattern=TOKEN_PATTERN, description="Trace kind: 1-64 characters of [a-z0-9_-]"),
]


class OwnerList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/checkpoints/owners``: agent ids holding checkpoints, sorted."""

    owners: list[str]
    truncated: bool = False


class ThreadList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/checkpoints/{owner}/threads``: threads (and namespaces) with heads."""

    owner: str
    threads: list[ThreadInfo]
    truncated: bool = False


class VersionView(msgspec.Struct, kw_only=True):
    """One checkpoint version's metadata (never its data or pending writes)."""

    checkpoint_id: str
    version: int
    created_at: datetime
    size_bytes: int
    sha256: str
    parent_id: str | None = None
    metadata: dict[str, str] = {}
    namespace: str = ""
    forked_from: CheckpointOrigin | None = None


def version_view(c: Checkpoint) -> VersionView:
    """The metadata of ``c``."""
    return VersionView(
        checkpoint_id=c.checkpoint_id,
        version=c.version,
        created_at=c.created_at,
        size_bytes=c.size_bytes,
        sha256=c.sha256,
        parent_id=c.parent_id,
        metadata=dict(c.metadata),
        namespace=c.namespace,
        forked_from=c.forked_from,
    )


class VersionList(msgspec.Struct, kw_only=True):
    """Body of ``GET .../versions``: one page, newest first.

    ``next_before``: pass as ``before`` for the next (older) page; null on the last.
    """

    owner: str
    thread_id: str
    versions: list[VersionView]
    next_before: str | None = None


class ForkBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST .../fork``: start ``new_thread`` from a version of the thread.

    ``version``: the version number to fork (as listed), or ``checkpoint_id``; neither:
    the latest. ``new_thread`` must be empty (409 otherwise).
    """

    new_thread: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    checkpoint_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    namespace: Annotated[str, msgspec.Meta(max_length=256)] = ""
    metadata: dict[str, str] = {}


class ForkView(msgspec.Struct, kw_only=True):
    """Body of the fork answer: the new thread's first version."""

    owner: str
    thread_id: str
    checkpoint: VersionView


class KindList(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/traces/kinds``: every stored kind, sorted by name."""

    kinds: list[TraceKind]


class RankedLocation(msgspec.Struct, kw_only=True):
    """A location and the strength of the kind there now."""

    location: str
    strength: float


class Strongest(msgspec.Struct, kw_only=True):
    """Body of ``GET /v1/traces/{kind}/strongest``: strongest first (ties by location)."""

    kind: str
    locations: list[RankedLocation]
