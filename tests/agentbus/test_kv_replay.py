"""``replay`` reads a whole bucket or fails: a partial read is never returned."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.js.api import KeyValueConfig

from agentbus.bus import Bus
from agentbus.kv.replay import replay

ENTRIES = 2000


class Entry(msgspec.Struct):
    n: int


async def test_a_read_that_runs_out_of_time_raises_instead_of_returning_part(bus: Bus) -> None:
    bucket = f"replay_{uuid.uuid4().hex[:8]}"
    kv = await bus.js.create_key_value(KeyValueConfig(bucket, history=1))
    try:
        await asyncio.gather(
            *(kv.put(f"k{i}", msgspec.json.encode(Entry(n=i))) for i in range(ENTRIES))
        )
        assert len(await replay(kv, Entry)) == ENTRIES
        outcomes = []
        for _ in range(5):  # a fetch timeout of 0.1 ms: most reads cannot finish
            try:
                outcomes.append(len(await replay(kv, Entry, timeout_s=0.0001)))
            except TimeoutError:
                outcomes.append(-1)
        assert all(n in (ENTRIES, -1) for n in outcomes), outcomes
        assert -1 in outcomes  # the short timeout did cut reads: the case is exercised
    finally:
        await bus.js.delete_key_value(bucket)
