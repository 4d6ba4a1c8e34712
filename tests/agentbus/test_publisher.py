"""``AckedPublisher``: acked JetStream publishes matched to their acks, against a real server."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.publisher import EXPECTED_LAST_SUBJECT_SEQ, AckedPublisher, subscribe_inline

pytestmark = pytest.mark.nats


async def test_acks_resolve_to_stream_sequences_in_order(bus: Bus) -> None:
    publisher = await bus.publisher()
    subject = bus.names.result_subject("pub")
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


async def test_inline_subscription_handles_each_message_in_order_and_survives_a_raise(
    bus: Bus,
) -> None:
    """Fails if nats-py stops putting messages into ``Subscription._pending_queue``."""
    subject = f"{bus.names.prefix}.inline"
    heard: list[bytes] = []

    def handle(msg: Msg) -> None:
        if msg.data == b"boom":
            raise ValueError("handler bug")
        heard.append(msg.data)

    sub = await subscribe_inline(bus.nc, subject, handle)
    for n in range(20):
        await bus.nc.publish(subject, b"boom" if n == 5 else str(n).encode())
    await bus.nc.flush()
    for _ in range(100):
        if len(heard) == 19:
            break
        await asyncio.sleep(0.05)
    assert heard == [str(n).encode() for n in range(20) if n != 5]
    assert bus.nc.is_connected  # the raise stayed out of the read loop
    await sub.unsubscribe()
    await bus.nc.publish(subject, b"after")
    await bus.nc.flush()
    assert heard[-1] == b"19"
    drained = await subscribe_inline(bus.nc, subject, handle)
    await drained.drain()  # join() of the stand-in queue returns
