"""The caller's side of the checkpoint service: versioned state per agent and thread.

``CheckpointClient(bus, agent_id)`` puts, gets, lists, forks, prunes and deletes the
checkpoints of one agent over ``<p>.checkpoint.<verb>.<agent_id>``;
``checkpoint_owners(bus)`` lists the agents that hold any. Values of any size: data too
large for one request (``max_payload``, 1 MiB by default, base64 on the wire) is
uploaded first to the Object Store ``<p>_checkpoint_blobs`` and sent by reference, and
data the service returns by reference is fetched. Pending writes likewise: while a
``put_writes`` request would not fit, its largest value is uploaded (as
``<thread prefix>/w/<32 hex>``) and sent by reference, so all of a task's writes still
go in one request, stored together or not at all. Either way the bytes read back are
the bytes put, checked against their SHA-256 (a mismatch raises
``CheckpointCorruptedError``, never returns data).

Errors::

    ConflictError
     └─ CheckpointConflictError    put on a parent that is not the latest (409)
    ContractError
     └─ CheckpointCorruptedError   a stored version fails its digest or does not decode
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from agentbus.bus import Bus
from agentbus.errors import (
    CheckpointConflictError,
    CheckpointCorruptedError,
    ConflictError,
    ContractError,
    NotFoundError,
)
from agentbus.messages import (
    BlobRef,
    Checkpoint,
    CheckpointReply,
    CheckpointsDeleted,
    CheckpointsReply,
    DeleteCheckpoints,
    DeleteThread,
    ForkCheckpoint,
    GetCheckpoint,
    ListCheckpoints,
    ListOwners,
    ListThreads,
    Message,
    OwnersReply,
    PendingWrite,
    PruneCheckpoints,
    PutCheckpoint,
    PutWrites,
    Retention,
    ThreadInfo,
    ThreadsReply,
    WritesReply,
)
from agentbus.state.uploads import (
    delete_upload_quietly,
    fit_writes,
    resolve,
    thread_key_prefix,
    upload,
    upload_min_bytes,
)

R = TypeVar("R", bound=Message)
SERVICE = "checkpoint"
DELETE_IDS_PER_REQUEST = 1000
"""Most checkpoint ids one ``DeleteCheckpoints`` request takes."""


def _typed_error(exc: Exception) -> Exception:
    """The typed checkpoint error a service error stands for (or ``exc`` itself)."""
    if isinstance(exc, ConflictError) and (err := CheckpointConflictError.from_message(str(exc))):
        return err
    if isinstance(exc, ContractError) and str(exc).startswith(CheckpointCorruptedError.PREFIX):
        return CheckpointCorruptedError(str(exc)[len(CheckpointCorruptedError.PREFIX) :])
    return exc


async def checkpoint_owners(
    bus: Bus, *, limit: int = 1000, timeout_s: float | None = None
) -> OwnersReply:
    """The owners (agent ids) holding checkpoints, sorted (``<p>.checkpoint.owners``).

    Raises:
        UnavailableError: no checkpoint service answers.
    """
    subject = bus.names.endpoint(SERVICE, "owners")
    return await bus.request(subject, ListOwners(limit=limit), OwnersReply, timeout_s=timeout_s)


class CheckpointClient:
    """Checkpoints of agent ``agent_id`` through the checkpoint service.

    Args:
        bus: the connection.
        agent_id: whose checkpoints (any non-empty string).
        timeout_s: request timeout (default: the bus settings').
    """

    def __init__(self, bus: Bus, agent_id: str, *, timeout_s: float | None = None) -> None:
        if not agent_id:
            raise ContractError("agent_id must not be empty")
        self.bus = bus
        self.agent_id = agent_id
        self.timeout_s = timeout_s

    async def _call(self, verb: str, req: Message, reply: type[R]) -> R:
        subject = self.bus.names.owner_endpoint(SERVICE, verb, self.agent_id)
        try:
            return await self.bus.request(subject, req, reply, timeout_s=self.timeout_s)
        except (ConflictError, ContractError) as exc:
            raise _typed_error(exc) from None

    async def put(
        self,
        thread_id: str,
        data: bytes,
        *,
        parent_id: str | None,
        namespace: str = "",
        metadata: dict[str, str] | None = None,
        checkpoint_id: str | None = None,
        branch: bool = False,
        retention: Retention | None = None,
    ) -> Checkpoint:
        """Append ``data`` as a new version of the thread; return it (without data).

        ``parent_id`` must be the thread's latest checkpoint id (None on an empty thread)
        unless ``branch`` is set (then any checkpoint of the thread, or None).

        Raises:
            CheckpointConflictError: ``parent_id`` is not the latest (or a concurrent
                put won); ``latest_id`` names the current latest.
            ConflictError: ``checkpoint_id`` already exists in the thread.
            ContractError: invalid ids or arguments.
        """
        ref: BlobRef | None = None
        if len(data) > upload_min_bytes(self.bus):
            ref = await upload(
                self.bus, thread_key_prefix(self.agent_id, thread_id, namespace), data
            )
        req = PutCheckpoint(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            data=b"" if ref else data,
            data_ref=ref,
            parent_id=parent_id,
            metadata=metadata or {},
            checkpoint_id=checkpoint_id,
            branch=branch,
            retention=retention,
        )
        try:
            return (await self._call("put", req, CheckpointReply)).checkpoint
        except (ConflictError, NotFoundError):
            # Refused for sure: the upload belongs to no version, remove it now. After a
            # timeout or a lost connection the put may have been stored, so the upload
            # stays; the service's orphan sweep deletes it later if nothing references it.
            if ref is not None:
                await delete_upload_quietly(self.bus, ref)
            raise

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, namespace: str = ""
    ) -> Checkpoint:
        """The latest version of the thread (or ``checkpoint_id``), data and writes included.

        Raises:
            NotFoundError: the thread is empty, or has no such checkpoint.
            CheckpointCorruptedError: the stored data fails its SHA-256 or does not decode.
        """
        req = GetCheckpoint(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            checkpoint_id=checkpoint_id,
        )
        return await resolve(self.bus, (await self._call("get", req, CheckpointReply)).checkpoint)

    async def latest(self, thread_id: str, *, namespace: str = "") -> Checkpoint | None:
        """Like ``get`` for the latest version, but None for an empty thread."""
        try:
            return await self.get(thread_id, namespace=namespace)
        except NotFoundError:
            return None

    async def threads(self, thread_id: str | None = None) -> list[ThreadInfo]:
        """The agent's threads and namespaces (only ``thread_id``'s if given)."""
        req = ListThreads(agent_id=self.agent_id, thread_id=thread_id)
        return (await self._call("threads", req, ThreadsReply)).threads

    async def fork(
        self,
        thread_id: str,
        new_thread_id: str,
        *,
        checkpoint_id: str | None = None,
        namespace: str = "",
        new_namespace: str = "",
        new_agent_id: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Checkpoint:
        """Start ``new_thread_id`` from a checkpoint (default: the latest) of ``thread_id``.

        Raises:
            NotFoundError: no such source checkpoint.
            ConflictError: the new thread is not empty.
        """
        req = ForkCheckpoint(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            checkpoint_id=checkpoint_id,
            new_thread_id=new_thread_id,
            new_namespace=new_namespace,
            new_agent_id=new_agent_id,
            metadata=metadata or {},
        )
        return (await self._call("fork", req, CheckpointReply)).checkpoint

    async def put_writes(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: Sequence[PendingWrite],
        *,
        namespace: str = "",
    ) -> int:
        """Attach ``writes`` to a checkpoint id; return how many it now has.

        The checkpoint may be put after its writes (they are keyed by its id).

        Values of any size: while the request would exceed ``max_payload``, the largest
        inline value is uploaded to the Object Store first and sent by reference.

        Raises:
            ContractError: a bad id, or the writes of one checkpoint would exceed one
                KV value.
        """
        prefix = thread_key_prefix(self.agent_id, thread_id, namespace)
        fitted, uploads = await fit_writes(self.bus, prefix, writes)
        req = PutWrites(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            checkpoint_id=checkpoint_id,
            writes=fitted,
        )
        try:
            return (await self._call("put_writes", req, WritesReply)).writes_count
        except (ConflictError, ContractError, NotFoundError):
            for ref in uploads:  # refused for sure (see ``put``)
                await delete_upload_quietly(self.bus, ref)
            raise

    async def delete_thread(self, thread_id: str) -> int:
        """Delete the thread, its namespaces and their data; return versions deleted."""
        req = DeleteThread(agent_id=self.agent_id, thread_id=thread_id)
        return (await self._call("delete", req, CheckpointsDeleted)).deleted_count

    async def delete_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], *, namespace: str = ""
    ) -> int:
        """Delete versions of the thread by id, data and writes included; return how many.

        Ids not in the thread are skipped. If the latest goes, the newest version left
        becomes the latest (or the thread is empty). Requests of up to
        ``DELETE_IDS_PER_REQUEST`` ids.

        Raises:
            ContractError: a malformed id.
        """
        ids = list(dict.fromkeys(checkpoint_ids))
        deleted = 0
        for start in range(0, len(ids), DELETE_IDS_PER_REQUEST):
            req = DeleteCheckpoints(
                agent_id=self.agent_id,
                thread_id=thread_id,
                namespace=namespace,
                checkpoint_ids=ids[start : start + DELETE_IDS_PER_REQUEST],
            )
            reply = await self._call("delete_checkpoints", req, CheckpointsDeleted)
            deleted += reply.deleted_count
        return deleted

    async def prune(
        self,
        thread_id: str,
        *,
        retention: Retention | None = None,
        namespace: str | None = None,
    ) -> int:
        """Apply ``retention`` (default: the thread's own) now; return versions deleted.

        ``namespace`` None prunes the thread and every namespace of it.
        """
        req = PruneCheckpoints(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            retention=retention,
        )
        return (await self._call("prune", req, CheckpointsDeleted)).deleted_count

    async def list(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        limit: int = 100,
        before: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> CheckpointsReply:
        """One page of the thread's history, newest first, without data or writes.

        ``before`` (a checkpoint id) starts the page below it; the reply's
        ``next_before`` is the cursor of the next page (None at the end). ``metadata``
        keeps versions whose metadata holds every given item.

        Raises:
            NotFoundError: ``before`` is not a checkpoint of the thread.
        """
        req = ListCheckpoints(
            agent_id=self.agent_id,
            thread_id=thread_id,
            namespace=namespace,
            limit=limit,
            before=before,
            metadata=metadata or {},
        )
        return await self._call("list", req, CheckpointsReply)

    async def history(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        metadata: dict[str, str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Checkpoint]:
        """Every version of the thread, newest first (pages of ``page_size``)."""
        before: str | None = None
        while True:
            page = await self.list(
                thread_id, namespace=namespace, limit=page_size, before=before, metadata=metadata
            )
            for ckpt in page.checkpoints:
                yield ckpt
            if page.next_before is None:
                return
            before = page.next_before
