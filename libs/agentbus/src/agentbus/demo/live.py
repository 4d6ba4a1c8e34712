"""The review demo's live totals: the ``summarizer`` deployment, asked while the run goes.

The reviewers publish a ``FileReviewed`` event per file (``review.file_reviewed``);
one ``summarizer`` replica (``agentbus.agents.summarizer``) adds them up per run.
``LiveTotals`` deploys it, waits until it answers (its subscription exists then, so
no event of the run is missed), asks it for the run's totals while the tasks run,
and at the end waits for it to have counted every file and compares its totals with
the direct computation from the task outputs (``check``: a difference is an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from agentbus.agents.reviewer import FILE_REVIEWED, FileReport
from agentbus.agents.summarizer import (
    FIGURES,
    SUMMARY_ASK,
    ReviewTotals,
    SummaryQuery,
    totals_of,
)
from agentbus.client import Client
from agentbus.errors import AgentBusError, UnavailableError
from agentbus.messages import Deployment, Subscription

SUMMARIZER = "summarizer"
"""Name of the summarizer deployment."""
ASK_TIMEOUT_S = 2.0
POLL_S = 0.5
"""How often the live totals are asked for."""


def summarizer_deployment(kinds: set[str], image: str) -> Deployment:
    """One summarizer replica, runnable on the nodes of ``kinds`` (docker, process)."""
    module = "agentbus.agents.summarizer"
    return Deployment(
        name=SUMMARIZER,
        replicas=1,
        image=image if "docker" in kinds else None,
        image_command=["python", "-m", module] if "docker" in kinds else None,
        command=[sys.executable, "-m", module] if "process" in kinds else None,
        subscriptions=[Subscription(pattern=FILE_REVIEWED, name="file_reviewed")],
        asks=[SUMMARY_ASK],
    )


def describe(totals: ReviewTotals) -> str:
    """One line of the figures: ``files 9  ok 7  errors 2  lines 1234 ...``."""
    return "  ".join(f"{name} {value}" for name, value in totals.figures().items())


class LiveTotals:
    """The summarizer of one demo run (``run``: a fresh id naming the run's totals)."""

    def __init__(self, client: Client, *, image: str, kinds: set[str]) -> None:
        self.client = client
        self.deployment = summarizer_deployment(kinds, image)
        self.run = uuid.uuid4().hex
        self.latest = ReviewTotals(run=self.run)
        """The last totals the summarizer answered with."""

    async def deploy(self, timeout_s: float) -> None:
        """Deploy the summarizer and wait until it answers.

        Raises:
            UnavailableError: it did not answer within ``timeout_s``.
        """
        await self.client.deploy(self.deployment)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.poll():
            if loop.time() > deadline:
                raise UnavailableError(
                    f"the summarizer did not answer within {timeout_s:.0f} s: "
                    "see the supervisor's log"
                )
            await asyncio.sleep(0.3)

    async def remove(self) -> None:
        """Delete the deployment (errors are ignored: the demo is ending)."""
        with contextlib.suppress(AgentBusError):
            await self.client.delete_deployment(SUMMARIZER)

    async def poll(self) -> bool:
        """Ask for the run's totals; True and ``latest`` updated if it answered."""
        try:
            reply = await self.client.ask(
                SUMMARY_ASK,
                SummaryQuery(run=self.run),
                timeout_s=ASK_TIMEOUT_S,
                reply_type=ReviewTotals,
            )
        except (UnavailableError, TimeoutError):
            return False
        self.latest = reply
        return True

    async def follow(self, show: Callable[[ReviewTotals], None]) -> None:
        """Ask every ``POLL_S`` and ``show`` the totals, until cancelled."""
        while True:
            if await self.poll():
                show(self.latest)
            await asyncio.sleep(POLL_S)

    async def final(self, files: int, timeout_s: float) -> ReviewTotals:
        """The totals once the summarizer counted ``files`` files (or at ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if await self.poll() and self.latest.files >= files:
                break
            await asyncio.sleep(0.2)
        return self.latest

    async def check(
        self, reports: list[FileReport], console: Console, timeout_s: float = 30.0
    ) -> ReviewTotals:
        """Print the summarizer's totals beside the direct ones; the summarizer's.

        Raises:
            AgentBusError: the two differ (the summarizer missed or double-counted a
                file), after waiting up to ``timeout_s`` for it to count them all.
        """
        direct = totals_of(self.run, reports)
        live = await self.final(direct.files, timeout_s)
        table = Table(title="totals")
        table.add_column("source")
        for name in FIGURES:
            table.add_column(name, justify="right")
        for source, totals in (("direct (task outputs)", direct), ("summarizer (events)", live)):
            table.add_row(source, *(str(v) for v in totals.figures().values()))
        console.print(table)
        if live.figures() != direct.figures():
            differ = ", ".join(
                f"{name} {live.figures()[name]} != {value}"
                for name, value in direct.figures().items()
                if live.figures()[name] != value
            )
            console.print(f"[red]summarizer totals differ[/red]: {differ}", highlight=False)
            raise AgentBusError(
                f"the summarizer's totals differ from the direct computation: {differ}"
            )
        console.print(
            f"summarizer totals match the direct computation "
            f"({live.duplicates} repeated events ignored)",
            highlight=False,
        )
        return live
