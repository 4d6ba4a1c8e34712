"""The raw-ceiling worker of ``bench.tasks``: nats-py and a pull consumer, nothing else.

``python -m bench._raw_worker NATS_URL STREAM CONSUMER REPLY_SUBJECT`` fetches batches
from the durable ``CONSUMER`` (``fetch(256)``: the server answers a pull with
``no_wait`` and ``expires`` as soon as one message is there), acks each and publishes
its payload unchanged to ``REPLY_SUBJECT`` (core NATS). Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats

BATCH = 256


async def main(url: str, stream: str, consumer: str, reply_subject: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(url, name="bench-raw-worker")
    sub = await nc.jetstream().pull_subscribe_bind(consumer, stream=stream)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(BATCH, timeout=0.5)
        except TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
            await nc.publish(reply_subject, msg.data)
    await sub.unsubscribe()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
