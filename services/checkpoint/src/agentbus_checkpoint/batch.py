"""One JetStream atomic batch (ADR-50, nats-server >= 2.12) guarded by a head revision.

A batch is a run of publishes sharing ``Nats-Batch-Id`` and numbered by
``Nats-Batch-Sequence``; the last carries ``Nats-Batch-Commit``. The server stores all
of them or none. The commit message also carries ``Nats-Expected-Last-Subject-Sequence``,
so the batch is stored only if its subject (the thread's head key) is still at the
revision read: of two writers racing on one head exactly one wins.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import nats.js.errors

from agentbus.bus import Bus
from agentbus.errors import UnavailableError

_WRONG_LAST_SEQUENCE = 10071
"""JetStream API error code of a failed ``Nats-Expected-Last-Subject-Sequence``."""


class HeadMovedError(Exception):
    """The batch's last subject was not at the expected revision; nothing was stored."""


class NotStoredError(UnavailableError):
    """The server refused the write (or the writer gave up retrying): nothing was stored.

    Unlike a timeout or a lost connection, whose write may have been stored, this
    outcome is certain, so data uploaded for the write may be deleted at once.
    """


async def publish_atomic(bus: Bus, messages: Sequence[tuple[str, bytes]], last_seq: int) -> int:
    """Publish ``messages`` (subject, payload) as one atomic batch; return the commit's seq.

    The last message commits the batch and is stored only if its subject's last
    sequence is ``last_seq`` (0: the subject holds no message).

    Raises:
        HeadMovedError: the last subject's sequence is not ``last_seq``; nothing stored.
        NotStoredError: the server refused the batch for another reason; nothing stored.
    """
    if not messages:
        raise ValueError("an atomic batch needs at least one message")
    batch_id = uuid.uuid4().hex
    *body, (commit_subject, commit_payload) = messages
    for seq, (subject, payload) in enumerate(body, start=1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(seq)}
        await bus.nc.publish(subject, payload, headers=headers)
    headers = {
        "Nats-Batch-Id": batch_id,
        "Nats-Batch-Sequence": str(len(messages)),
        "Nats-Expected-Last-Subject-Sequence": str(last_seq),
        "Nats-Batch-Commit": "1",
    }
    try:
        ack = await bus.js.publish(commit_subject, commit_payload, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            raise HeadMovedError from None
        raise NotStoredError(f"atomic checkpoint write failed: {exc}") from exc
    return ack.seq
