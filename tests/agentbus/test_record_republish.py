"""Task records are republished once stored (``Bus.ensure``), which ``Client.wait`` follows."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import KeyValueConfig

from agentbus.bus import Bus

pytestmark = pytest.mark.nats


async def test_ensure_adds_the_republish_to_an_older_tasks_bucket(bus: Bus) -> None:
    names = bus.names
    await bus.js.delete_key_value(names.tasks_bucket)  # the fixture's, made by ensure()
    await bus.js.create_key_value(KeyValueConfig(names.tasks_bucket, history=1))
    await bus.ensure()
    config = (await bus.js.stream_info(f"KV_{names.tasks_bucket}")).config
    assert config.republish is not None and config.republish.dest == names.task_records_all()
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: object) -> None:
        await heard.put(msg.data)  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(names.task_record_subject("t-1"), cb=on_msg)
    try:
        kv = await bus.kv(names.tasks_bucket)
        revision = await kv.create("t-1", b"first")
        with pytest.raises(Exception, match="wrong last sequence"):
            await kv.update("t-1", b"refused", last=revision + 7)
        await kv.update("t-1", b"second", last=revision)
        got = [await asyncio.wait_for(heard.get(), 5) for _ in range(2)]
        await asyncio.sleep(0.2)
    finally:
        await sub.unsubscribe()
    assert got == [b"first", b"second"] and heard.empty()  # a refused write is not heard
