"""An agent process for the dashboard tests: its handler prints its input line to stdout.

Run as ``python -m tests._harness.say_agent`` (``PYTHONPATH`` the repository root) by a
process-runtime deployment; the supervisor ships each printed line to the log stream.
The handler's capability is ``$SAY_AGENT_CAPABILITY`` (default ``say``), so tests on one
stack each get agents of their own.
"""

from __future__ import annotations

import os

from agentbus.runtime import Agent, TaskContext

CAPABILITY = os.environ.get("SAY_AGENT_CAPABILITY", "say")
agent = Agent("sayer")


@agent.handler(CAPABILITY)
async def say(ctx: TaskContext, line: str) -> str:
    """Print ``line`` (flushed at once) and return it."""
    print(line, flush=True)
    return line


if __name__ == "__main__":
    agent.main()
