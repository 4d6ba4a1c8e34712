"""Deleting single versions of a thread by checkpoint id (``DeleteCheckpoints``).

LangGraph's ``delete_for_runs`` deletes the checkpoints one run made, anywhere in a
thread's history, the latest included. Steps, each safe against a concurrent put:

1. Resolve the ids to versions through the id index; ids not in the thread are
   skipped (so a repeated request is a no-op).
2. If the head names one of those versions, move it back, by compare-and-set on the
   head revision read, to the newest version that stays (or to an *emptied* head:
   ``checkpoint_id`` "", ``version`` 0). The head keeps the highest version number
   given out in ``last_version``, and a put appends above it, so no put ever writes
   under a version number being deleted. A put that lands first makes the
   compare-and-set fail: the head is read again (it now names the put's version,
   which stays). A put whose record is stored but whose head is not yet written
   loses its head compare-and-set to the move, drops its record and gets
   ``CheckpointConflictError``; if the request names that put's version (a caller
   that chose the id), ``last_version`` is raised past it, which fences the put the
   same way before its record is deleted.
3. Delete each version with ``Housekeeping.delete_version`` (index entry, writes,
   object index, keys, objects). Readers never see a head naming a deleted version;
   ``get`` by a deleted id is 404; history skips the gaps.

A crash between 2 and 3 leaves versions above the head that no reader reaches and a
repeated request deletes; their objects are deleted then (or, once their keys are
gone, by the orphan sweep).
"""

from __future__ import annotations

import nats.js.errors
from loguru import logger

from agentbus.errors import CheckpointCorruptedError, NotFoundError
from agentbus.messages import Checkpoint, CheckpointHead, DeleteCheckpoints, encode, utcnow
from agentbus_checkpoint.commit import NotStoredError
from agentbus_checkpoint.housekeeping import Housekeeping
from agentbus_checkpoint.keys import ThreadKeys, where


class VersionDeletes:
    """Delete versions of a thread by id (see the module docstring)."""

    def __init__(self, house: Housekeeping) -> None:
        self.house = house
        self.store = house.store

    async def delete(self, req: DeleteCheckpoints) -> int:
        """Delete the versions ``req.checkpoint_ids`` names; return how many went.

        Raises:
            ContractError: bad ids (agent, thread, namespace too long or empty).
            CheckpointCorruptedError: the thread's head does not decode.
            NotStoredError: the head kept moving (``put_attempts`` compare-and-sets lost).
        """
        tk = self.store.keys(req.agent_id, req.thread_id, req.namespace)
        targets: dict[int, str] = {}
        for checkpoint_id in dict.fromkeys(req.checkpoint_ids):
            try:
                targets[await self.store.version_of(tk, checkpoint_id)] = checkpoint_id
            except (NotFoundError, CheckpointCorruptedError):
                continue  # not in the thread (or an undecodable index entry: left alone)
        if not targets:
            return 0
        await self._move_head(tk, set(targets))
        deleted = 0
        for version, checkpoint_id in sorted(targets.items()):
            deleted += await self.house.delete_version(tk, version, checkpoint_id)
        self.store.metrics.deleted.labels("delete").inc(deleted)
        logger.info("checkpoint versions deleted", thread=tk.prefix, versions=deleted)
        return deleted

    async def _move_head(self, tk: ThreadKeys, versions: set[int]) -> None:
        """Move the head off ``versions`` (compare-and-set, retried on a moved head).

        A version at or above the head's next number is a put's whose head is not
        written yet: ``last_version`` is raised past it, so that put's head
        compare-and-set fails and it drops its record (``commit.advance_head``).
        """
        kv = await self.store.kv()
        top = max(versions)
        for _ in range(self.store.settings.put_attempts):
            head = await self.store.read_head(tk)
            moving = head.value is not None and head.value.version in versions
            if not moving and top < head.next_version:
                return
            latest: tuple[str, int] = ("", 0)  # an emptied head unless a version stays
            if moving and head.value is not None:
                if keep := await self._newest_kept(tk, head.value, versions):
                    latest = (keep.checkpoint_id, keep.version)
            elif head.value is not None:  # only fencing a put above the head: it stays
                latest = (head.value.checkpoint_id, head.value.version)
            last_version = max(head.next_version - 1, top)
            value = CheckpointHead(
                checkpoint_id=latest[0],
                version=latest[1],
                updated_at=utcnow(),
                oldest_version=head.value.oldest_version
                if latest[1] and head.value
                else last_version + 1,
                retention=head.stored.retention if head.stored else None,
                last_version=last_version,
            )
            try:
                await kv.update(tk.head, encode(value), last=head.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise NotStoredError(
            f"the head of {where(tk)} kept moving: gave up deleting after "
            f"{self.store.settings.put_attempts} attempts"
        )

    async def _newest_kept(
        self, tk: ThreadKeys, head: CheckpointHead, versions: set[int]
    ) -> Checkpoint | None:
        """The newest readable version below ``head`` that is not being deleted."""
        for version in range(head.version - 1, head.oldest_version - 1, -1):
            if version in versions:
                continue
            try:
                record = await self.store.read_record(tk, version)
            except CheckpointCorruptedError:
                continue  # never make an undecodable version the latest
            if record is not None:
                return record
        return None
