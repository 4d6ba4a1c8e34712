"""Pending writes of any size through the LangGraph checkpointer (and the client under it).

A request carries at most ``max_payload`` (1 MiB, base64 inside JSON): values that
would not fit go to the Object Store first and are sent by reference, all of a task's
writes still in one request (one compare-and-set: a task's writes are stored together
or not at all). Real checkpoint service, real nats-server, a real ``StateGraph``.
"""

from __future__ import annotations

import asyncio
import operator
import os
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

from agentbus.bus import Bus
from agentbus.integrations.langgraph import AgentbusSaver
from agentbus.messages import PendingWrite
from tests._harness.checkpoint import AGED_S, GRACE_S, Service, blob_names, sweeper

pytestmark = pytest.mark.timeout(120)
KIB = 1024


class Big(TypedDict):
    log: Annotated[list[str], operator.add]
    blob: bytes


def _graph(size_bytes: int) -> StateGraph[Big]:
    def make(state: Big) -> dict[str, Any]:
        return {"log": ["make"], "blob": os.urandom(size_bytes)}

    def check(state: Big) -> dict[str, Any]:
        return {"log": [f"check:{len(state['blob'])}"]}

    builder = StateGraph(Big)
    builder.add_node("make", make)
    builder.add_node("check", check)
    builder.add_edge(START, "make")
    builder.add_edge("make", "check")
    builder.add_edge("check", END)
    return builder


@pytest.mark.parametrize("durability", ["async", "sync"])
async def test_a_graph_node_returning_one_mib_runs_and_resumes(
    bus: Bus, svc: Service, durability: Literal["async", "sync"]
) -> None:
    saver = AgentbusSaver(bus, agent_id="big")
    graph = _graph(1024 * KIB).compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": f"big-{durability}"}}
    final = await graph.ainvoke({"log": [], "blob": b""}, config, durability=durability)
    assert final["log"] == ["make", f"check:{1024 * KIB}"]
    state = await graph.aget_state(config)
    assert state.values["blob"] == final["blob"]
    history = [s async for s in graph.aget_state_history(config)]
    assert len(history) >= 3


async def test_aput_writes_of_three_400_kib_values_and_one_of_900_kib(
    bus: Bus, svc: Service
) -> None:
    saver = AgentbusSaver(bus, agent_id="big")
    config: Any = {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}
    config = await saver.aput(config, empty_checkpoint(), {"step": 0}, {})
    values = [os.urandom(400 * KIB) for _ in range(3)]
    await saver.aput_writes(config, [("c", v) for v in values], "task-a")
    huge = os.urandom(900 * KIB)
    await saver.aput_writes(config, [("c", huge), ("d", b"small")], "task-b")
    tup = await saver.aget_tuple(config)
    assert tup is not None
    assert tup.pending_writes == [
        *[("task-a", "c", v) for v in values],
        ("task-b", "c", huge),
        ("task-b", "d", b"small"),
    ]


async def test_client_uploaded_write_values_survive_the_orphan_sweep(
    bus: Bus, svc: Service
) -> None:
    client = svc.client()
    value = os.urandom(900 * KIB)
    await client.put_writes("t", "c1", [PendingWrite(task_id="x", channel="c", data=value)])
    referenced = await blob_names(bus)
    assert len(referenced) == 1 and "/w/" in next(iter(referenced))
    await asyncio.sleep(AGED_S)
    sweep, _ = sweeper(bus, grace_s=GRACE_S)
    assert await sweep.sweep() == 0
    assert await blob_names(bus) == referenced
    # a repeated request (a retry after a timeout) keeps the first value and its object
    await client.put_writes("t", "c1", [PendingWrite(task_id="x", channel="c", data=value)])
    await client.put("t", b"state", parent_id=None, checkpoint_id="c1")
    got = await client.get("t")
    assert [w.data for w in got.writes] == [value]
