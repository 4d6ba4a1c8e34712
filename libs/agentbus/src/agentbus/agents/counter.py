"""The ``counter`` agent: a long task that survives crashes by checkpointing its progress.

Input ``CountTask``: count through ``steps`` steps (step ``i`` adds ``i`` to the
total), saving the progress (``CountState``) with ``ctx.checkpoint.save`` every
``every`` steps. An attempt first loads the task's latest checkpoint and resumes from
it, so an agent killed mid-way loses at most the steps since the last save. With
``record_steps`` each step, once done, is also published (and stored: the publish is
awaited) as a ``StepDone`` on ``<p>.events.counter.step.<agent_id>``, which lets a test count
exactly which steps ran more than once.

Output ``CountResult``: the total (``steps * (steps - 1) / 2`` when right), where the
final attempt resumed from, and the steps executed over all attempts as far as the
checkpoints know. The agent also keeps durable agent state (``agent.state``): how
many times it has started, restored on every start and saved at once.
"""

from __future__ import annotations

import asyncio

import msgspec

from agentbus.runtime import Agent, TaskContext
from agentbus.settings import AgentSettings


class CountTask(msgspec.Struct, frozen=True, kw_only=True):
    """Task input."""

    steps: int = 10_000
    every: int = 100
    """Save a checkpoint every this many steps."""
    step_sleep_s: float = 0.0
    """Pause per step (to make the task long)."""
    record_steps: bool = False


class CountState(msgspec.Struct, frozen=True, kw_only=True):
    """The checkpointed progress: the next step to run and what the steps so far made."""

    next_step: int = 0
    total: int = 0
    executed: int = 0
    """Steps executed in all attempts up to this checkpoint (redone ones count twice)."""
    saves: int = 0


class CountResult(msgspec.Struct, frozen=True, kw_only=True):
    """Task output."""

    total: int
    steps: int
    resumed_from: int
    """``next_step`` of the checkpoint the final attempt started from (0: from scratch)."""
    executed: int
    attempt: int
    agent_id: str
    agent_starts: int


class StepDone(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Published on ``<p>.events.counter.step.<agent_id>`` after each step when ``record_steps``."""

    task_id: str
    step: int
    attempt: int
    agent_id: str


class CounterAgentState(msgspec.Struct, kw_only=True):
    """``agent.state`` of the counter agent."""

    starts: int = 0


def build(settings: AgentSettings | None = None) -> Agent:
    """A counter agent (``settings`` default: from the environment)."""
    agent = Agent("counter", settings=settings, state_type=CounterAgentState)

    @agent.on_restore
    async def count_start(state: CounterAgentState | None) -> None:
        """Count this start in the restored agent state and save it at once."""
        agent.state = CounterAgentState(starts=(state.starts if state else 0) + 1)
        await agent.save_state()

    @agent.handler("count")
    async def count(ctx: TaskContext, task: CountTask) -> CountResult:
        """Count through ``task.steps``, resuming from and saving checkpoints."""
        state = await ctx.checkpoint.load(CountState) or CountState()
        total, executed, saves = state.total, state.executed, state.saves
        subject = ctx.bus.names.event_subject("counter", f"step.{ctx.agent_id}")
        for step in range(state.next_step, task.steps):
            total += step
            executed += 1
            if task.record_steps:
                done = StepDone(
                    task_id=ctx.task_id, step=step, attempt=ctx.attempt, agent_id=ctx.agent_id
                )
                await ctx.bus.js.publish(subject, msgspec.json.encode(done))
            if task.step_sleep_s:
                await asyncio.sleep(task.step_sleep_s)
            if (step + 1) % task.every == 0 and step + 1 < task.steps:
                saves += 1
                progress = CountState(
                    next_step=step + 1, total=total, executed=executed, saves=saves
                )
                await ctx.checkpoint.save(progress, metadata={"step": str(step + 1)})
        return CountResult(
            total=total,
            steps=task.steps,
            resumed_from=state.next_step,
            executed=executed,
            attempt=ctx.attempt,
            agent_id=ctx.agent_id,
            agent_starts=agent.state.starts if agent.state else 0,
        )

    return agent


if __name__ == "__main__":
    build().main()
