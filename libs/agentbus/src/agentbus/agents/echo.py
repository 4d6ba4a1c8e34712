"""The ``echo`` agent: returns its input. For tests, benchmarks and smoke checks.

Input is any JSON value. An object may steer the handler: ``{"sleep_s": 1.5}`` sleeps
first, ``{"fail": "why"}`` raises ``RuntimeError("why")``, ``{"exit": 3}`` ends the
process at once with that exit code (a crash, for supervision tests).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentbus.runtime import Agent, TaskContext

agent = Agent("echo", max_concurrency=8)


@agent.handler("echo")
async def echo(ctx: TaskContext, value: Any) -> Any:
    """Return ``value`` unchanged, after the steering described in the module docstring.

    Raises:
        RuntimeError: the input asked to fail.
    """
    if isinstance(value, dict):
        if (delay := value.get("sleep_s")) is not None:
            await asyncio.sleep(float(delay))
        if (code := value.get("exit")) is not None:
            os._exit(int(code))
        if (reason := value.get("fail")) is not None:
            raise RuntimeError(str(reason))
    return value


if __name__ == "__main__":
    agent.main()
