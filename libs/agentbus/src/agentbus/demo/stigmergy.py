"""The stigmergic mode of the review demo (``agentbus demo review --stigmergy``).

No central task list: the demo hands each ``reviewer`` replica one ``review-tree`` task
("walk this tree", with a walker number that seeds its own order) and nothing else.
The walkers split the work among themselves through traces only (``reviewed``,
``reviewing`` claims, ``found_todo``; see ``agentbus.agents.reviewer``). With
``traces=False`` the same walkers ignore each other, which shows what the traces save.
The hot spots are read back from the traces: the strongest ``found_todo`` locations.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentbus.agents.reviewer import TRACE_KINDS, FileReport, ReviewTree, TreeReport, location
from agentbus.client import Client, new_task_id
from agentbus.errors import AgentBusError
from agentbus.traces import Traces

CAPABILITY = "review-tree"


@dataclass
class WalkOutcome:
    """What the walkers did: every review they made (duplicates included), per walker."""

    run: str
    walkers: list[TreeReport] = field(default_factory=list)
    failed_walkers: list[str] = field(default_factory=list)
    hot_spots: list[tuple[str, float]] = field(default_factory=list)

    @property
    def reviews(self) -> list[FileReport]:
        """Every file review by every walker, duplicates included."""
        return [r for w in self.walkers for r in w.reports]

    def unique(self) -> list[FileReport]:
        """One report per reviewed file (the first seen), sorted by path."""
        seen: dict[str, FileReport] = {}
        for r in self.reviews:
            seen.setdefault(r.path, r)
        return sorted(seen.values(), key=lambda r: r.path)


async def run_walkers(
    client: Client,
    root: Path,
    *,
    replicas: int,
    use_traces: bool,
    console: Console,
    timeout_s: float,
) -> WalkOutcome:
    """Give each of ``replicas`` walkers a ``review-tree`` task over ``root``; collect.

    Raises:
        RequestTimeoutError: the walkers had not all finished within ``timeout_s``.
    """
    outcome = WalkOutcome(run=uuid.uuid4().hex[:10])
    traces = Traces(client.bus, kinds=TRACE_KINDS)
    for kind in TRACE_KINDS:
        await traces.kind(kind.kind)  # defined before any walker deposits
    ids = [new_task_id() for _ in range(replicas)]
    tasks = [
        await client.build_task(
            CAPABILITY,
            ReviewTree(root=str(root), run=outcome.run, walker=i, traces=use_traces),
            task_id=task_id,
            timeout_s=timeout_s,
            max_attempts=1,
        )
        for i, task_id in enumerate(ids)
    ]
    await client.submit_many(tasks)
    columns = (TextColumn("walkers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("walk", total=len(tasks))
        async for record in client.wait_many(ids, timeout_s=timeout_s):
            progress.advance(bar)
            if record.status != "succeeded":
                reason = record.error.message if record.error else record.status
                outcome.failed_walkers.append(f"{record.task_id}: {reason}")
                continue
            try:
                outcome.walkers.append(await client.output(record, TreeReport))
            except AgentBusError as exc:
                outcome.failed_walkers.append(f"{record.task_id}: bad output: {exc}")
    if use_traces:
        prefix = location(outcome.run, "")
        ranked = await traces.strongest("found_todo", prefix, n=10)
        outcome.hot_spots = [(loc[len(prefix) :], s) for loc, s in ranked]
    outcome.walkers.sort(key=lambda w: w.walker)
    return outcome
