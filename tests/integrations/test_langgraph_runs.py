"""``AgentbusSaver.adelete_for_runs``: a real StateGraph, run several times on one thread.

LangGraph copies ``config["metadata"]["run_id"]`` into the metadata of every checkpoint
a run writes; deleting a run deletes those checkpoints and their pending writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langgraph.checkpoint.base import CheckpointTuple

from agentbus.bus import Bus
from agentbus.integrations.langgraph import AgentbusSaver
from tests._harness.checkpoint import Service
from tests._harness.langgraph_graph import build

pytestmark = pytest.mark.timeout(120)


def _config(thread: str, run_id: str | None = None) -> Any:
    config: Any = {"configurable": {"thread_id": thread}}
    if run_id is not None:
        config["metadata"] = {"run_id": run_id}
    return config


async def _history(saver: AgentbusSaver, thread: str) -> list[CheckpointTuple]:
    return [t async for t in saver.alist(_config(thread))]


def _runs(history: list[CheckpointTuple]) -> list[str]:
    return [t.metadata.get("run_id", "") for t in history]


async def _two_runs(saver: AgentbusSaver, thread: str) -> Any:
    graph = build(fail_b=False).compile(checkpointer=saver)
    for run_id in ("run-1", "run-2"):
        final = await graph.ainvoke({"log": [], "n": 1}, _config(thread, run_id))
        assert final["n"] == 25
    return graph


async def test_deleting_a_run_keeps_the_other_runs_checkpoints_and_writes(
    bus: Bus, svc: Service
) -> None:
    saver = AgentbusSaver(bus, agent_id="runs")
    graph = await _two_runs(saver, "th")
    sub: Any = {"configurable": {"thread_id": "th", "checkpoint_ns": "sub:1"}}
    before = await _history(saver, "th")
    latest = await saver.aget_tuple(_config("th"))
    assert latest is not None and latest.metadata["run_id"] == "run-2"
    await saver.aput(sub, before[-1].checkpoint, {"run_id": "run-1", "step": 0}, {})
    assert set(_runs(before)) == {"run-1", "run-2"}
    run1 = [t for t in before if t.metadata["run_id"] == "run-1"]
    run2 = [t for t in before if t.metadata["run_id"] == "run-2"]
    assert any(t.pending_writes for t in run1) and any(t.pending_writes for t in run2)

    await saver.adelete_for_runs(["run-1"])

    after = await _history(saver, "th")
    assert [t.config for t in after] == [t.config for t in run2]  # namespace sub:1 too
    assert [t.pending_writes for t in after] == [t.pending_writes for t in run2]
    for tup in run1:
        assert await saver.aget_tuple(tup.config) is None  # checkpoint and writes gone
    kv = await bus.kv(bus.names.checkpoints_bucket)
    run1_ids = [t.config["configurable"]["checkpoint_id"] for t in run1]
    assert not [k for k in await kv.keys() if any(i in k for i in run1_ids)]
    # get latest still works, and the thread resumes from run 2's state
    still = await saver.aget_tuple(_config("th"))
    assert still is not None and still.config == latest.config
    final = await graph.ainvoke({"log": [], "n": 1}, _config("th", "run-3"))
    assert final["log"] == ["a", "b", "c"] * 3
    assert set(_runs(await _history(saver, "th"))) == {"run-2", "run-3"}


async def test_deleting_the_run_with_the_latest_checkpoint_moves_the_thread_back(
    bus: Bus, svc: Service
) -> None:
    saver = AgentbusSaver(bus, agent_id="runs")
    graph = await _two_runs(saver, "back")
    run1_latest = next(t for t in await _history(saver, "back") if t.metadata["run_id"] == "run-1")

    await asyncio.to_thread(saver.delete_for_runs, ["run-2"])  # the sync form, off the loop

    latest = await saver.aget_tuple(_config("back"))
    assert latest is not None and latest.config == run1_latest.config
    assert set(_runs(await _history(saver, "back"))) == {"run-1"}
    state = await graph.aget_state(_config("back"))
    assert state.values["log"] == ["a", "b", "c"]
    final = await graph.ainvoke({"log": [], "n": 1}, _config("back", "run-3"))
    assert final["log"] == ["a", "b", "c"] * 2
    # a thread all of whose checkpoints go is empty, and starts over
    await saver.adelete_for_runs(["run-1", "run-3"])
    assert await saver.aget_tuple(_config("back")) is None
    assert await _history(saver, "back") == []
    final = await graph.ainvoke({"log": [], "n": 1}, _config("back", "run-4"))
    assert final["log"] == ["a", "b", "c"]


async def test_deleting_unknown_runs_is_a_no_op(bus: Bus, svc: Service) -> None:
    saver = AgentbusSaver(bus, agent_id="runs")
    await saver.adelete_for_runs(["run-1"])  # no threads at all
    await _two_runs(saver, "keep")
    before = await _history(saver, "keep")
    await saver.adelete_for_runs([])
    await saver.adelete_for_runs(["run-x", "run-y"])
    after = await _history(saver, "keep")
    assert [(t.config, t.pending_writes) for t in after] == [
        (t.config, t.pending_writes) for t in before
    ]
    assert svc.metric("agentbus_checkpoint_deleted_total", {"reason": "delete"}) == 0
