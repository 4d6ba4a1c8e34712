"""A small LangGraph graph run in subprocesses by the LangGraph tests (and the bench).

``python -m tests._harness.langgraph_graph NATS_URL PREFIX THREAD MODE``, MODE one of:

* ``fail``: run from the start; node ``b`` raises (the process exits 3);
* ``interrupt``: run from the start, stopping before node ``c`` (prints ``next``);
* ``resume``: continue the thread from its checkpoint (prints the final state).

Every node appends its name to ``log`` (a reducer adds lists), so a node that ran
twice shows up twice in the final state.
"""

from __future__ import annotations

import asyncio
import json
import operator
import sys
from typing import Annotated, Any, NotRequired, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from agentbus.bus import Bus
from agentbus.integrations.langgraph import AgentbusSaver
from agentbus.settings import BusSettings


class State(TypedDict):
    log: Annotated[list[str], operator.add]
    n: int
    blob: NotRequired[bytes]
    """Carried along untouched (``bench/state_langgraph.py`` puts state of a size here)."""


def build(*, fail_b: bool) -> StateGraph[State]:
    def a(state: State) -> dict[str, Any]:
        return {"log": ["a"], "n": state["n"] + 1}

    def b(state: State) -> dict[str, Any]:
        if fail_b:
            raise RuntimeError("b fails in this process")
        return {"log": ["b"], "n": state["n"] * 10}

    def c(state: State) -> dict[str, Any]:
        return {"log": ["c"], "n": state["n"] + 5}

    builder = StateGraph(State)
    builder.add_node("a", a)
    builder.add_node("b", b)
    builder.add_node("c", c)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder


async def main(nats_url: str, prefix: str, thread: str, mode: str) -> int:
    bus = await Bus.connect(BusSettings(nats_url=nats_url, prefix=prefix))
    try:
        saver = AgentbusSaver(bus, agent_id="graphs")
        config: RunnableConfig = {"configurable": {"thread_id": thread}}
        if mode == "fail":
            graph = build(fail_b=True).compile(checkpointer=saver)
            try:
                await graph.ainvoke({"log": [], "n": 1}, config)
            except RuntimeError as exc:
                print(json.dumps({"error": str(exc)}))
                return 3
            return 0
        if mode == "interrupt":
            graph = build(fail_b=False).compile(checkpointer=saver, interrupt_before=["c"])
            await graph.ainvoke({"log": [], "n": 1}, config)
            snapshot = await graph.aget_state(config)
            print(json.dumps({"next": list(snapshot.next), "values": snapshot.values}))
            return 0
        graph = build(fail_b=False).compile(checkpointer=saver)
        final = await graph.ainvoke(None, config)
        print(json.dumps({"final": final}))
        return 0
    finally:
        await bus.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:5])))
