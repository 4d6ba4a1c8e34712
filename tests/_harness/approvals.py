"""Helpers of the approval tests: an agent whose handler waits at an approval gate,
and reads of the approvals a test waits for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy

from agentbus.bus import Bus
from agentbus.client.approvals import list_approvals
from agentbus.messages import ApprovalEvent, ApprovalRecord
from agentbus.runtime import Agent, TaskContext
from tests._harness.agents import quick_settings


class GateInput(msgspec.Struct, frozen=True, kw_only=True):
    """What the ``gate`` handler asks: ``timeout_s``/``default`` of its request."""

    summary: str = "push to main?"
    options: list[str] = msgspec.field(default_factory=lambda: ["approve", "deny"])
    timeout_s: float | None = None
    default: str | None = None


@dataclass
class GateAgent:
    """Agent ``gater`` whose ``gate`` handler returns the decision of one approval,
    and whose ``echo`` handler returns its input (to show a free slot while parked)."""

    agent: Agent
    decisions: list[dict[str, Any]] = field(default_factory=list)


def gate_agent(agent_id: str, *, max_concurrency: int = 1, **settings: object) -> GateAgent:
    g = GateAgent(
        Agent(
            "gater", max_concurrency=max_concurrency, settings=quick_settings(agent_id, **settings)
        )
    )

    @g.agent.handler("gate")
    async def gate(ctx: TaskContext, ask: GateInput) -> dict[str, Any]:
        decision = await ctx.request_approval(
            ask.summary, options=ask.options, timeout_s=ask.timeout_s, default=ask.default
        )
        out = {
            "option": decision.option,
            "comment": decision.comment,
            "decided_by": decision.decided_by,
            "timed_out": decision.timed_out,
        }
        g.decisions.append(out)
        return out

    @g.agent.handler("echo")
    async def echo(ctx: TaskContext, value: Any) -> Any:
        return value

    return g


async def pending_of(bus: Bus, task_id: str) -> ApprovalRecord | None:
    """The pending approval of ``task_id``, or None (a probe for ``eventually``)."""
    found = await list_approvals(bus, status="pending", task_id=task_id)
    return found[0] if found else None


async def approval_events(bus: Bus, approval_id: str, count: int) -> list[ApprovalEvent]:
    """The first ``count`` ``ApprovalEvent``s of ``approval_id`` in the events stream."""
    subject = f"{bus.names.prefix}.events.approval.*.{approval_id}"
    sub = await bus.js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        events = []
        async with asyncio.timeout(10):
            while len(events) < count:
                msg = await sub.next_msg(timeout=10)
                events.append(msgspec.json.decode(msg.data, type=ApprovalEvent))
        return events
    finally:
        await sub.unsubscribe()
