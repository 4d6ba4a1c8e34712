"""An agent process for the approval tests: ``gate`` returns the decision it waited for.

Run as ``python -m tests.approvals._gate_agent`` with ``AGENTBUS_AGENT_ID``,
``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX`` (and short ``AGENTBUS_AGENT_LEASE_S``).
"""

from __future__ import annotations

import os
from typing import Any

from agentbus.runtime import Agent, TaskContext

agent = Agent("gater")


@agent.handler("gate")
async def gate(ctx: TaskContext, summary: str) -> dict[str, Any]:
    decision = await ctx.request_approval(summary, options=["approve", "deny"])
    return {
        "option": decision.option,
        "comment": decision.comment,
        "decided_by": decision.decided_by,
        "agent_id": ctx.agent_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
    }


if __name__ == "__main__":
    agent.main()
