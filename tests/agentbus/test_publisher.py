"""``AckedPublisher``: acked JetStream publishes matched to their acks, against a real server."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from agentbus.bus import Bus
from agentbus.bus.publisher import EXPECTED_LAST_SUBJECT_SEQ, AckedPublisher

pytestmark = pytest.mark.nats


async def test_acks_resolve_to_stream_sequences_in_order(bus: Bus) -> None:
    publisher = await bus.publisher()
    subject = bus.names.result_subject("pub", "a1")
    futures = [await publisher.publish(subject, f"m{n}".encode()) for n in range(50)]
    seqs = await asyncio.gather(*futures)
    assert seqs == sorted(seqs) and len(set(seqs)) == 50
    assert publisher.pending == 0
    stored = await bus.js.get_msg(bus.names.results_stream, seq=seqs[7])
    assert stored.data == b"m7"


async def test_refusals_are_typed(bus: Bus) -> None:
    publisher = await bus.publisher()
    key = f"$KV.{bus.names.tasks_bucket}.pub-1"
    first = await (await publisher.publish(key, b"1", {EXPECTED_LAST_SUBJECT_SEQ: "0"}))
    again = await publisher.publish(key, b"2", {EXPECTED_LAST_SUBJECT_SEQ: "0"})
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await again
    second = await publisher.publish(key, b"3", {EXPECTED_LAST_SUBJECT_SEQ: str(first)})
    assert await second > first
    nowhere = await publisher.publish(f"{bus.names.prefix}.nostream.x", b"?")
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await nowhere


async def test_a_missing_ack_fails_after_the_timeout(bus: Bus) -> None:
    subject = f"{bus.names.prefix}.silent"
    sub = await bus.nc.subscribe(subject)  # hears the message, never answers
    publisher = AckedPublisher(bus.nc, timeout_s=0.3)
    try:
        silent = await publisher.publish(subject, b"?")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(silent, 5)
        assert publisher.pending == 0
    finally:
        await publisher.close()
        await sub.unsubscribe()
