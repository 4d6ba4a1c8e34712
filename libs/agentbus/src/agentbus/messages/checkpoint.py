"""Checkpoints: versioned agent state per agent, thread and namespace.

A *thread* is one line of state of one agent (``agent_id``): a chain of versions, each
naming its parent. A *namespace* (``""`` = the thread itself) is a sub-thread with its
own chain under the same thread id (LangGraph's ``checkpoint_ns`` of subgraphs);
deleting a thread deletes its namespaces. Requests go to ``<p>.checkpoint.<verb>``
(``nats.micro`` service ``checkpoint``); the KV layout is in ``agentbus_checkpoint.keys``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from agentbus.messages.common import (
    BlobRef,
    Message,
)

CheckpointId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,127}$",
        description="A checkpoint id, unique within its thread and namespace.",
    ),
]


class Retention(Message, frozen=True, kw_only=True):
    """How much history a thread keeps; the latest version is always kept.

    Both limits apply when both are set. Enforced after every put on the thread and on
    demand (``PruneCheckpoints``); the service also sweeps idle threads for ``max_age_s``.
    """

    keep_last: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Keep at most this many versions (the newest)."""
    max_age_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Delete versions older than this many seconds (by ``created_at``)."""


class CheckpointOrigin(Message, frozen=True, kw_only=True):
    """Where a forked thread came from."""

    agent_id: str
    thread_id: str
    namespace: str = ""
    checkpoint_id: str


class PendingWrite(Message, frozen=True, kw_only=True):
    """A write attached to a checkpoint by a task (LangGraph's ``put_writes``).

    ``idx`` orders a task's writes; LangGraph gives special writes (errors, interrupts)
    negative indices. Storing ``(task_id, idx)`` again keeps the first value when
    ``idx >= 0`` and replaces it when ``idx < 0``.
    """

    task_id: str
    channel: str
    idx: int = 0
    data: bytes = b""
    data_ref: BlobRef | None = None
    """Set (and ``data`` empty) when the value lives in the Object Store."""
    sha256: str = ""
    """Hex SHA-256 of the value; set by the service, checked on every read."""
    task_path: str = ""


class PutCheckpoint(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.put.<owner>``): append a version to a thread.

    Reply ``CheckpointReply`` (without the data), or 409 ``ConflictError`` when
    ``parent_id`` is not the thread's latest checkpoint (``None`` for an empty thread).
    """

    agent_id: str
    thread_id: str
    data: bytes = b""
    parent_id: str | None = None
    metadata: dict[str, str] = {}
    data_ref: BlobRef | None = None
    """A value too large for one request: upload it first to the Object Store
    ``<p>_checkpoint_blobs`` as ``<thread key prefix>/<32 hex>`` and send ``data``
    empty with this reference."""
    namespace: str = ""
    checkpoint_id: CheckpointId | None = None
    """The new version's id; the service makes one (``<version:012d>-<8 hex>``) if None."""
    branch: bool = False
    """Allow ``parent_id`` to name any checkpoint of the thread, not only the latest
    (time travel: the new version branches from an older one and becomes the latest).
    Concurrent puts still conflict."""
    retention: Retention | None = None
    """Set the thread's retention (kept for later puts); None keeps the current one."""


class GetCheckpoint(Message, frozen=True, kw_only=True):
    """Request (``<p>.checkpoint.get.<owner>``): the latest version, or one by id.

    Reply ``CheckpointReply`` with the data (or ``data_ref``) and pending writes; 404 if
    absent; 400 "checkpoint corrupted" if it fails its digest or does not decode.
    """

    agent_id: str
    thread_id: str
    checkpoint_id: str | None = None
    namespace: str = ""


class Checkpoint(Message, frozen=True, kw_only=True):
    """One version of an agent's state on a thread.

    Stored in KV with ``data`` (one message is the version) and without ``writes``
    (they have keys of their own); a get reply carries both, a put reply and history
    neither. ``data_ref`` is set instead of ``data`` when the value is in the Object
    Store; the reader fetches it and checks ``sha256``.
    """

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
    namespace: str = ""
    size_bytes: int = 0
    forked_from: CheckpointOrigin | None = None
    writes: list[PendingWrite] = []
    """Pending writes attached to this version, sorted by ``(task_path, task_id, idx)``."""


class CheckpointReply(Message, frozen=True, kw_only=True):
    """Reply carrying one checkpoint."""

    checkpoint: Checkpoint


class PutWrites(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.put_writes.<owner>``): attach writes to a checkpoint id.

    Reply ``WritesReply``. The checkpoint need not be stored yet: writes may overtake
    their checkpoint (LangGraph's default "async" durability sends both at once).
    """

    agent_id: str
    thread_id: str
    namespace: str = ""
    checkpoint_id: str
    writes: list[PendingWrite]


class WritesReply(Message, frozen=True, kw_only=True):
    """Reply to ``PutWrites``: writes now attached to the checkpoint."""

    writes_count: int


class ListCheckpoints(Message, frozen=True, kw_only=True):
    """Request (``<p>.checkpoint.list.<owner>``): a thread's history, newest first.

    Reply ``CheckpointsReply``: versions without data or writes, at most ``limit``,
    older than ``before`` if given, whose metadata holds every ``metadata`` item.
    """

    agent_id: str
    thread_id: str
    namespace: str = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    before: str | None = None
    metadata: dict[str, str] = {}


class CheckpointsReply(Message, frozen=True, kw_only=True):
    """Reply to ``ListCheckpoints``; ``next_before`` is the cursor of the next page."""

    checkpoints: list[Checkpoint]
    next_before: str | None = None


class ListThreads(Message, frozen=True, kw_only=True):
    """Request (``<p>.checkpoint.threads.<owner>``): an agent's threads (with their namespaces).

    Only the namespaces of ``thread_id`` when it is given. Reply ``ThreadsReply``.
    """

    agent_id: str
    thread_id: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 1000


class ThreadInfo(Message, frozen=True, kw_only=True):
    """One thread (or namespace) and its head."""

    thread_id: str
    namespace: str = ""
    checkpoint_id: str
    version: int
    oldest_version: int
    updated_at: datetime
    retention: Retention | None = None


class ThreadsReply(Message, frozen=True, kw_only=True):
    """Reply to ``ListThreads``, sorted by thread id and namespace."""

    threads: list[ThreadInfo]
    truncated: bool = False


class ListOwners(Message, frozen=True, kw_only=True):
    """Request (``<p>.checkpoint.owners``): the owners (agent ids) that hold checkpoints.

    Reply ``OwnersReply``. Not per owner: only identities allowed the subject (the
    gateway, operators) may ask.
    """

    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 1000


class OwnersReply(Message, frozen=True, kw_only=True):
    """Reply to ``ListOwners``: owners sorted, at most ``limit`` (then ``truncated``)."""

    owners: list[str]
    truncated: bool = False


class ForkCheckpoint(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.fork.<owner>``): start a new thread from a checkpoint.

    The new thread's first version has the source's data and metadata (plus
    ``metadata``), no parent, and ``forked_from`` naming the source; pending writes are
    not copied. Reply ``CheckpointReply``; 409 if the new thread is not empty.
    """

    agent_id: str
    thread_id: str
    namespace: str = ""
    checkpoint_id: str | None = None
    """The source version; None = the latest."""
    new_thread_id: str
    new_agent_id: str | None = None
    """The new thread's agent; None = the same agent."""
    new_namespace: str = ""
    metadata: dict[str, str] = {}


class DeleteThread(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.delete.<owner>``): delete a thread, its namespaces and data.

    Reply ``CheckpointsDeleted`` (0 for an unknown thread).
    """

    agent_id: str
    thread_id: str


class PruneCheckpoints(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.prune.<owner>``): apply retention now.

    ``retention`` None applies the thread's own policy (or the service default);
    ``namespace`` None prunes the thread and all its namespaces. Reply
    ``CheckpointsDeleted``.
    """

    agent_id: str
    thread_id: str
    namespace: str | None = None
    retention: Retention | None = None


class DeleteCheckpoints(Message, frozen=True, kw_only=True):
    """Command (``<p>.checkpoint.delete_checkpoints.<owner>``): delete versions of a thread by id.

    Deletes each named version with its data and pending writes (ids not in the thread
    are skipped: a repeat is a no-op). When the latest version goes, the head moves
    back to the newest version left, or the thread becomes empty; version numbers are
    never given out again, so the history may have gaps. Reply ``CheckpointsDeleted``;
    400 for a malformed id or more than 1000 ids.
    """

    agent_id: str
    thread_id: str
    namespace: str = ""
    checkpoint_ids: Annotated[list[CheckpointId], msgspec.Meta(max_length=1000)]


class CheckpointsDeleted(Message, frozen=True, kw_only=True):
    """Reply to ``DeleteThread``, ``DeleteCheckpoints``, ``PruneCheckpoints``: versions deleted."""

    deleted_count: int


class CheckpointHead(Message, frozen=True, kw_only=True):
    """KV value at ``<thread key>.latest``: the thread's latest version."""

    checkpoint_id: str
    version: int
    updated_at: datetime
    oldest_version: int = 1
    """Versions ``oldest_version..version`` may exist; older ones were pruned."""
    retention: Retention | None = None
    last_version: int = 0
    """The highest version number given out, when above ``version`` (the latest
    versions were deleted by ``DeleteCheckpoints``); a put appends version
    ``max(version, last_version) + 1``. A thread whose every version was deleted keeps
    its head with ``checkpoint_id`` "" and ``version`` 0 (an empty thread)."""


class CheckpointIndex(Message, frozen=True, kw_only=True):
    """KV value at ``<thread key>.id.<escaped id>``: the version of a checkpoint id."""

    version: int


class CheckpointWrites(Message, frozen=True, kw_only=True):
    """KV value at ``<thread key>.w.<escaped checkpoint id>``: its pending writes."""

    checkpoint_id: str
    writes: list[PendingWrite] = []


MESSAGES: tuple[type[Message], ...] = (
    Retention,
    CheckpointOrigin,
    PendingWrite,
    PutCheckpoint,
    GetCheckpoint,
    Checkpoint,
    CheckpointReply,
    PutWrites,
    WritesReply,
    ListCheckpoints,
    CheckpointsReply,
    ListThreads,
    ThreadInfo,
    ThreadsReply,
    ListOwners,
    OwnersReply,
    ForkCheckpoint,
    DeleteThread,
    DeleteCheckpoints,
    PruneCheckpoints,
    CheckpointsDeleted,
    CheckpointHead,
    CheckpointIndex,
    CheckpointWrites,
)
