"""An agent process for the event tests: one subscription, every handling recorded.

Run as ``python -m tests._harness.event_listener``; the bus and agent identity come from the
usual ``AGENTBUS_*`` variables, the subscription from ``EV_PATTERN``, ``EV_MODE``,
``EV_START`` (``new``, ``all``, a sequence or an RFC 3339 time) and
``EV_MAX_DELIVERIES``. Each handled event appends one JSON line to ``EV_OUT`` (one
``write`` on an ``O_APPEND`` file, so lines of several processes never mix and none is
lost to a SIGKILL) *before* the handler returns (and so before the ack): a line is a
handling, acked or not.
"""

from __future__ import annotations

import asyncio
import json
import os

import msgspec

from agentbus.errors import FatalTaskError
from agentbus.events import EventContext, parse_start
from agentbus.runtime import Agent


class Note(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    n: int
    fail: str = ""
    """``fatal``: the handler raises a non-retryable error; ``retry``: a retryable one."""
    sleep_s: float = 0.0


def build() -> Agent:
    agent = Agent("listener")
    out = os.open(os.environ["EV_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start: str = os.environ.get("EV_START", "new")

    @agent.on_event(
        os.environ.get("EV_PATTERN", "work.>"),
        mode="each" if os.environ.get("EV_MODE") == "each" else "shared",
        start=parse_start(start),
        max_deliveries=int(os.environ.get("EV_MAX_DELIVERIES", "5")),
    )
    async def on_work(ctx: EventContext, note: Note) -> None:
        if note.sleep_s:
            await asyncio.sleep(note.sleep_s)
        if note.fail == "fatal":
            raise FatalTaskError("this note is poison")
        if note.fail == "retry":
            raise RuntimeError("transient trouble")
        line = {
            "agent": ctx.agent_id,
            "pid": os.getpid(),
            "id": ctx.event_id,
            "n": note.n,
            "seq": ctx.seq,
            "key": ctx.key,
            "topic": ctx.topic,
            "delivery": ctx.delivery,
            "source": ctx.source,
        }
        os.write(out, (json.dumps(line) + "\n").encode())

    return agent


if __name__ == "__main__":
    build().main()
