"""Object Store metadata with the server's store time, one object or all of them.

nats-py's ``ObjectInfo.mtime`` is the uploader's clock at the start of the upload
(``ObjectStore.put`` fills it in on the client); a skewed client clock would make a
fresh upload look old. Here an object's age comes from the timestamp JetStream gave
its meta message when it was stored (the meta is published after the last chunk, so
this is the end of the upload).

Layout (ADR-20): stream ``OBJ_<bucket>``, meta of object ``name`` on
``$O.<bucket>.M.<base64url(name)>`` (one message per subject, rolled up), chunks on
``$O.<bucket>.C.<nuid>``. A deleted object keeps a meta message with ``deleted``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectInfo

from agentbus.bus import Bus

_METAS_PER_FETCH = 256


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's metadata and when the server stored it (UTC)."""

    info: ObjectInfo
    stored_at: datetime

    @property
    def name(self) -> str:
        """The object's name."""
        return self.info.name or ""


def meta_subject(bucket: str, name: str) -> str:
    """Subject of the meta message of object ``name`` in ``bucket``."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


async def object_meta(bus: Bus, bucket: str, name: str) -> StoredObject | None:
    """Object ``name``'s metadata (one stream get request), None if absent or deleted."""
    try:
        msg = await bus.js.get_last_msg(f"OBJ_{bucket}", meta_subject(bucket, name))
    except nats.js.errors.NotFoundError:
        return None
    info = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
    if info.deleted or msg.time is None:
        return None
    return StoredObject(info, msg.time)


async def iter_objects(bus: Bus, bucket: str) -> AsyncGenerator[StoredObject, None]:
    """Every object of ``bucket`` not deleted, oldest meta first (stream order).

    One ephemeral pull consumer over the meta subjects, last message per subject,
    256 metas per request; it ends when the consumer has no more pending.
    """
    try:  # an empty bucket: no consumer (and no fetch waiting out its timeout)
        await bus.js.get_last_msg(f"OBJ_{bucket}", f"$O.{bucket}.M.>")
    except nats.js.errors.NotFoundError:
        return
    sub = await bus.js.pull_subscribe(
        f"$O.{bucket}.M.>",
        stream=f"OBJ_{bucket}",
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    try:
        while True:
            try:
                msgs = await sub.fetch(_METAS_PER_FETCH, timeout=2)
            except TimeoutError:
                return
            for msg in msgs:
                info = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
                if not info.deleted:
                    yield StoredObject(info, msg.metadata.timestamp)
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
