"""A KV entry read from its stream's leader, not from whichever replica answers first.

KV buckets allow direct gets, which any replica of an R3 stream answers, also one that
has not applied the latest writes (a follower a moment behind, or a server catching
up after a restart). Where a stale answer would be taken for the truth ("no such
task", "this agent still runs on that node"), read through the stream's leader:
``$JS.API.STREAM.MSG.GET`` is served by the leader alone and sees every write it
acknowledged before the request.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext

KV_OPERATION = "KV-Operation"
"""Header marking a KV delete or purge (``DEL`` / ``PURGE``); absent on a put."""


async def leader_get(js: JetStreamContext, bucket: str, key: str) -> tuple[bytes, int] | None:
    """``(value, revision)`` of ``key`` in KV ``bucket``, as the stream leader has it.

    Returns None when the key was never written, or its last message is a delete or
    purge marker (or empty).

    Raises:
        TimeoutError: no answer within the JetStream request timeout (no leader).
        nats.errors.Error: the request failed otherwise.
    """
    try:
        msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=False)
    except nats.js.errors.NotFoundError:
        return None
    if (msg.headers or {}).get(KV_OPERATION) or not msg.data or not msg.seq:
        return None
    return msg.data, msg.seq
