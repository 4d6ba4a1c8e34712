"""An agent process for the dashboard tests: ``say`` prints its input line to stdout.

Run as ``python -m tests._harness.say_agent`` (``PYTHONPATH`` the repository root) by a
process-runtime deployment; the supervisor ships each printed line to the log stream.
"""

from __future__ import annotations

from agentbus.runtime import Agent, TaskContext

agent = Agent("sayer")


@agent.handler("say")
async def say(ctx: TaskContext, line: str) -> str:
    """Print ``line`` (flushed at once) and return it."""
    print(line, flush=True)
    return line


if __name__ == "__main__":
    agent.main()
