"""The agent of the chaos test: ``square`` returns ``n * n`` after a short sleep.

Run as ``python -m tests.chaos._agent`` (settings from ``AGENTBUS_*``). Every handler
run is appended to ``$CHAOS_RUNS_FILE`` as ``task_id attempt agent_id monotonic_s``, so
the test can count redeliveries across SIGKILLs and see which agent ran what when.
"""

from __future__ import annotations

import asyncio
import os
import time

from agentbus.runtime import Agent, TaskContext

agent = Agent("chaos", max_concurrency=4)
_RUNS = os.environ.get("CHAOS_RUNS_FILE")


@agent.handler("square")
async def square(ctx: TaskContext, value: dict[str, float]) -> dict[str, float]:
    """``{"n": n, "sleep_s": s}`` → ``{"n": n, "square": n * n}`` after ``s`` seconds."""
    _record_run(ctx.task_id, ctx.attempt, ctx.agent_id)
    await asyncio.sleep(value["sleep_s"])
    return {"n": value["n"], "square": value["n"] * value["n"]}


def _record_run(task_id: str, attempt: int, agent_id: str) -> None:
    if _RUNS:
        with open(_RUNS, "a") as runs:  # one short line: atomic with O_APPEND
            runs.write(f"{task_id} {attempt} {agent_id} {time.monotonic():.3f}\n")


if __name__ == "__main__":
    agent.main()
