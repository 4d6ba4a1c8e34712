"""The LangGraph checkpointer against the real checkpoint service and nats-server.

The cross-process tests run a real ``StateGraph`` in one subprocess until it stops
(an exception in a node, or ``interrupt_before``) and resume the thread in another.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.serde.types import ERROR

from agentbus.bus import Bus
from agentbus.integrations.langgraph import AgentbusSaver
from tests._harness.checkpoint import Service

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def _checkpoint(n: int) -> Any:
    ckpt = empty_checkpoint()
    ckpt["channel_values"] = {"n": n, "blob": "x" * (n * 1000)}
    ckpt["channel_versions"] = {"n": n}
    return ckpt


async def _put_chain(saver: AgentbusSaver, thread: str, count: int, ns: str = "") -> list[Any]:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
    configs = []
    for i in range(count):
        metadata: Any = {"source": "loop", "step": i, "parents": {}}
        config = await saver.aput(config, _checkpoint(i), metadata, {"n": i})
        configs.append(config)
    return configs


async def _all(saver: AgentbusSaver, config: Any, **kw: Any) -> list[CheckpointTuple]:
    return [t async for t in saver.alist(config, **kw)]


async def test_saver_round_trips_checkpoints_writes_and_history(bus: Bus, svc: Service) -> None:
    saver = AgentbusSaver(bus, agent_id="lg")
    configs = await _put_chain(saver, "t1", 4)
    latest = await saver.aget_tuple({"configurable": {"thread_id": "t1"}})
    assert latest is not None
    assert latest.config == configs[-1]
    assert latest.checkpoint["channel_values"] == {"n": 3, "blob": "x" * 3000}
    assert latest.metadata["step"] == 3
    assert latest.parent_config == configs[-2]
    first = await saver.aget_tuple(configs[0])
    assert first is not None and first.parent_config is None
    assert await saver.aget_tuple({"configurable": {"thread_id": "nope"}}) is None

    await saver.aput_writes(configs[-1], [("out", {"v": 1}), (ERROR, "boom")], "task-b", "~1")
    await saver.aput_writes(configs[-1], [("out", {"v": 2})], "task-a", "~0")
    await saver.aput_writes(configs[-1], [("out", {"v": 3})], "task-a", "~0")  # idx 0 kept
    tup = await saver.aget_tuple(configs[-1])
    assert tup is not None
    assert tup.pending_writes == [
        ("task-a", "out", {"v": 2}),
        ("task-b", ERROR, "boom"),
        ("task-b", "out", {"v": 1}),
    ]  # writes_sort_key order: task_path, task_id, idx

    listed = await _all(saver, {"configurable": {"thread_id": "t1"}})
    assert [t.metadata["step"] for t in listed] == [3, 2, 1, 0]
    limited = await _all(saver, {"configurable": {"thread_id": "t1"}}, limit=2, before=configs[3])
    assert [t.metadata["step"] for t in limited] == [2, 1]
    filtered = await _all(saver, {"configurable": {"thread_id": "t1"}}, filter={"step": 1})
    assert [t.config for t in filtered] == [configs[1]]
    assert await _all(saver, {"configurable": {"thread_id": "t1"}}, filter={"step": 9}) == []
    await _put_chain(saver, "t2", 1)
    await _put_chain(saver, "t1", 1, ns="child:1")
    everything = await _all(saver, None)
    assert len(everything) == 6
    assert len(await _all(saver, {"configurable": {"thread_id": "t1"}})) == 5  # all namespaces
    assert saver.get_next_version(None, None) < saver.get_next_version("1.5", None)


async def test_saver_copies_prunes_and_deletes_threads(bus: Bus, svc: Service) -> None:
    saver = AgentbusSaver(bus, agent_id="lg")
    configs = await _put_chain(saver, "src", 3)
    await _put_chain(saver, "src", 2, ns="sub")
    await saver.aput_writes(configs[-1], [("out", 7)], "task-1")
    await saver.acopy_thread("src", "dst")
    copied = await _all(saver, {"configurable": {"thread_id": "dst", "checkpoint_ns": ""}})
    original = await _all(saver, {"configurable": {"thread_id": "src", "checkpoint_ns": ""}})
    assert [t.checkpoint["id"] for t in copied] == [t.checkpoint["id"] for t in original]
    assert [t.parent_config is None for t in copied] == [False, False, True]
    assert copied[0].pending_writes == [("task-1", "out", 7)]
    assert len(await _all(saver, {"configurable": {"thread_id": "dst"}})) == 5

    await saver.aprune(["dst"])
    remaining = await _all(saver, {"configurable": {"thread_id": "dst"}})
    assert sorted(t.config["configurable"]["checkpoint_ns"] for t in remaining) == ["", "sub"]
    assert remaining[0].checkpoint["id"] == original[0].checkpoint["id"]

    await saver.adelete_thread("src")
    assert await _all(saver, {"configurable": {"thread_id": "src"}}) == []
    await saver.aprune(["dst"], strategy="delete")
    assert await saver.aget_tuple({"configurable": {"thread_id": "dst"}}) is None
    with pytest.raises(ValueError, match="strategy"):
        await saver.aprune(["dst"], strategy="keep_some")


async def test_sync_methods_run_from_another_thread(bus: Bus, svc: Service) -> None:
    saver = AgentbusSaver(bus, agent_id="lg")
    configs = await _put_chain(saver, "sync", 2)
    tup = await asyncio.to_thread(saver.get_tuple, {"configurable": {"thread_id": "sync"}})
    assert tup is not None and tup.config == configs[-1]
    listed = await asyncio.to_thread(lambda: list(saver.list(configs[-1])))
    assert len(listed) == 1
    with pytest.raises(RuntimeError, match="asynchronous"):
        saver.get_tuple(configs[-1])  # on the event loop's own thread it would deadlock


async def _run_graph(bus: Bus, thread: str, mode: str) -> tuple[int, dict[str, Any]]:
    url = bus.settings.nats_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests._harness.langgraph_graph",
        url,
        bus.names.prefix,
        thread,
        mode,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, f"no output from the graph process ({mode}): {err.decode()[-2000:]}"
    return proc.returncode or 0, json.loads(lines[-1])


async def test_a_graph_failing_in_one_process_resumes_in_another(bus: Bus, svc: Service) -> None:
    code, out = await _run_graph(bus, "crashy", "fail")
    assert code == 3 and "b fails" in out["error"]
    saver = AgentbusSaver(bus, agent_id="graphs")
    stopped = await saver.aget_tuple({"configurable": {"thread_id": "crashy"}})
    assert stopped is not None
    assert stopped.checkpoint["channel_values"]["log"] == ["a"]  # a's work is saved
    assert any(channel == ERROR for _, channel, _ in stopped.pending_writes or [])

    code, out = await _run_graph(bus, "crashy", "resume")
    assert code == 0
    assert out["final"] == {"log": ["a", "b", "c"], "n": 25}  # a ran once: (1 + 1) * 10 + 5


async def test_an_interrupted_graph_continues_in_another_process(bus: Bus, svc: Service) -> None:
    code, out = await _run_graph(bus, "paused", "interrupt")
    assert code == 0
    assert out["next"] == ["c"]
    assert out["values"] == {"log": ["a", "b"], "n": 20}
    code, out = await _run_graph(bus, "paused", "resume")
    assert code == 0
    assert out["final"] == {"log": ["a", "b", "c"], "n": 25}
