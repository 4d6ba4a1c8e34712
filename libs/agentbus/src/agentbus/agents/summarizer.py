"""The ``summarizer`` agent of the review demo: live totals of a run, from events.

It has no task capability. A shared subscription on ``review.file_reviewed`` (name
``file_reviewed``, the deployment's consumers ``topic-<deployment>-file_reviewed*``)
adds each ``FileReviewed`` event of a run to that run's ``ReviewTotals``, counting a
path once per run: an event delivered again (an ack lost, a retried task publishing
anew) is counted in ``duplicates`` and changes no figure, so the totals equal those
computed from the task outputs (``totals_of``) once every file's event is in.

Ask ``review-summary`` with ``SummaryQuery{run}``: the reply is that run's
``ReviewTotals`` so far (all zeros for a run it has not heard of). The totals are
kept in memory for the last ``MAX_RUNS`` runs; run one replica (the totals of a
deployment's replicas are not merged).

Run with ``python -m agentbus.agents.summarizer``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import msgspec
from loguru import logger

from agentbus.agents.reviewer import FILE_REVIEWED, FileReport, FileReviewed
from agentbus.events import EventContext
from agentbus.messaging import MessageContext
from agentbus.runtime import Agent
from agentbus.settings import AgentSettings

SUMMARY_ASK = "review-summary"
"""Ask capability answering ``SummaryQuery`` with ``ReviewTotals``."""
MAX_RUNS = 64
"""Runs whose totals the summarizer keeps (the oldest is dropped first)."""
FIGURES = ("files", "ok", "errors", "lines", "functions", "classes", "todos")
"""The summed figures of ``ReviewTotals`` (what ``figures`` returns)."""


class SummaryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask payload of ``review-summary``: which run."""

    run: str


class ReviewTotals(msgspec.Struct, kw_only=True):
    """The totals of one run: files counted once each, and the sums of their figures."""

    run: str = ""
    files: int = 0
    ok: int = 0
    errors: int = 0
    lines: int = 0
    functions: int = 0
    classes: int = 0
    todos: int = 0
    duplicates: int = 0
    """Events for a path already counted (ignored; not a figure of the report)."""

    def add(self, event: FileReviewed) -> None:
        """Add one file's figures (the caller makes sure it is a new path)."""
        self.files += 1
        self.ok += event.status == "ok"
        self.errors += event.status != "ok"
        self.lines += event.lines
        self.functions += event.functions
        self.classes += event.classes
        self.todos += event.todos

    def figures(self) -> dict[str, int]:
        """The summed figures (``FIGURES``) by name: what two totals are compared on."""
        return {name: getattr(self, name) for name in FIGURES}


def totals_of(run: str, reports: Iterable[FileReport]) -> ReviewTotals:
    """The direct computation: the totals of ``reports`` (one per file)."""
    totals = ReviewTotals(run=run)
    for report in reports:
        totals.add(FileReviewed.of(run, report))
    return totals


class Summaries:
    """The totals of the last ``max_runs`` runs and the paths each has counted."""

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, tuple[ReviewTotals, set[str]]] = OrderedDict()

    def add(self, event: FileReviewed) -> bool:
        """Count ``event`` in its run; False (and a duplicate) if its path was counted."""
        if event.run not in self._runs:
            self._runs[event.run] = (ReviewTotals(run=event.run), set())
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        totals, seen = self._runs[event.run]
        if event.path in seen:
            totals.duplicates += 1
            return False
        seen.add(event.path)
        totals.add(event)
        return True

    def totals(self, run: str) -> ReviewTotals:
        """A copy of ``run``'s totals so far (zeros for an unknown run)."""
        found = self._runs.get(run)
        return msgspec.structs.replace(found[0]) if found else ReviewTotals(run=run)


def build(settings: AgentSettings | None = None, summaries: Summaries | None = None) -> Agent:
    """A summarizer agent (``settings`` default: from the environment)."""
    agent = Agent("summarizer", settings=settings)
    held = summaries if summaries is not None else Summaries()

    @agent.on_event(FILE_REVIEWED, mode="shared", name="file_reviewed")
    async def file_reviewed(ctx: EventContext, event: FileReviewed) -> None:
        """Count the file in its run's totals, once per path."""
        if not held.add(event):
            logger.debug("file counted already", run=event.run, path=event.path, seq=ctx.seq)

    @agent.on_ask(SUMMARY_ASK)
    async def summary(ctx: MessageContext, query: SummaryQuery) -> ReviewTotals:
        """The totals of ``query.run`` so far."""
        return held.totals(query.run)

    return agent


if __name__ == "__main__":
    build().main()
