"""The ``reviewer`` agent of the review demo: metrics of Python source files.

Capability ``review`` (the task-queue mode): input ``ReviewFile`` (the file's path and
raw bytes, which travel over the bus: the library moves inputs over 64 KiB through the
Object Store). Output ``FileReport``:

- ``status`` ``ok`` or ``error``; ``error`` is a one-line reason (not UTF-8, or does
  not parse);
- ``lines``: ``len(source.splitlines())`` of the UTF-8 text;
- ``functions``: ``ast.FunctionDef`` + ``ast.AsyncFunctionDef`` nodes;
- ``classes``: ``ast.ClassDef`` nodes;
- ``todos``: comment tokens (``tokenize``) containing ``TODO``, ``FIXME`` or ``XXX``.

Each review also publishes a ``FileReviewed`` event on ``review.file_reviewed`` (key:
the path), which the ``summarizer`` agent (``agentbus.agents.summarizer``) adds up.

Capability ``review-tree`` (the stigmergic mode, ``agentbus demo review --stigmergy``):
input ``ReviewTree``; the agent walks the tree itself, in its own shuffled order, and
coordinates with the other walkers only through traces (``agentbus.traces``) at
``review/<run>/<path>``: it skips a file whose ``reviewed`` trace it senses, claims it
(the ``reviewing`` claim, exclusive, expiring), checks ``reviewed`` again, reviews it,
deposits ``reviewed`` and ``found_todo`` (amount: the TODO count), then releases the
claim. Files claimed by others are revisited at the end until they are reviewed (a
crashed walker's claim expires). Output ``TreeReport``: the files this walker reviewed.
With ``traces=False`` it reviews every file (the baseline that shows the duplicates).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import random
import time
import tokenize
from pathlib import Path
from typing import Literal

import msgspec

from agentbus.errors import ConflictError
from agentbus.messages import TraceKind
from agentbus.runtime import Agent, TaskContext
from agentbus.traces import Traces

TODO_MARKERS = ("TODO", "FIXME", "XXX")


class ReviewFile(msgspec.Struct, frozen=True, kw_only=True):
    """Task input: a file's path relative to the reviewed tree, and its bytes."""

    path: str
    content: bytes
    run: str = ""
    """The demo run this file belongs to: copied into the ``FileReviewed`` event."""


class FileReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Task output: the metrics of one file, or why there are none."""

    path: str
    status: Literal["ok", "error"]
    error: str | None = None
    lines: int | None = None
    functions: int | None = None
    classes: int | None = None
    todos: int | None = None


FILE_REVIEWED = "review.file_reviewed"
"""Topic of the ``FileReviewed`` events (key: the file's path)."""


class FileReviewed(msgspec.Struct, frozen=True, kw_only=True):
    """Event on ``review.file_reviewed``: one file reviewed, with the figures the report sums.

    The counts are 0 for a file with ``status`` ``error``.
    """

    run: str
    path: str
    status: Literal["ok", "error"]
    lines: int = 0
    functions: int = 0
    classes: int = 0
    todos: int = 0

    @classmethod
    def of(cls, run: str, report: FileReport) -> FileReviewed:
        """The event telling ``report`` in run ``run``."""
        return cls(
            run=run,
            path=report.path,
            status=report.status,
            lines=report.lines or 0,
            functions=report.functions or 0,
            classes=report.classes or 0,
            todos=report.todos or 0,
        )


def _error(path: str, reason: str) -> FileReport:
    return FileReport(path=path, status="error", error=" ".join(reason.split()))


def review_source(path: str, content: bytes) -> FileReport:
    """Compute the ``FileReport`` of ``content``; never raises on bad input."""
    try:
        source = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(path, f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return _error(path, f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})")
    except ValueError as exc:  # e.g. source with NUL bytes
        return _error(path, f"ValueError: {exc}")
    functions = classes = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions += 1
        elif isinstance(node, ast.ClassDef):
            classes += 1
    try:
        todos = sum(
            1
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and any(m in tok.string for m in TODO_MARKERS)
        )
    except (tokenize.TokenError, SyntaxError) as exc:
        return _error(path, f"tokenize: {exc}")
    return FileReport(
        path=path,
        status="ok",
        lines=len(source.splitlines()),
        functions=functions,
        classes=classes,
        todos=todos,
    )


def python_files(root: Path) -> list[tuple[str, Path]]:
    """Every ``*.py`` file under ``root`` as ``(relative posix path, path)``, sorted.

    Folders named ``site-packages`` and symbolic links (files and folders) are skipped.
    """
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != "site-packages" and not (here / d).is_symlink()]
        for name in filenames:
            path = here / name
            if name.endswith(".py") and not path.is_symlink() and path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


# -- the stigmergic walk -------------------------------------------------------------
TRACE_KINDS = (
    TraceKind(kind="reviewing", half_life_s=30.0),
    TraceKind(kind="reviewed", half_life_s=3600.0),
    TraceKind(kind="found_todo", half_life_s=3600.0),
)
"""Kinds the walkers deposit (created with these settings if new)."""


class ReviewTree(msgspec.Struct, frozen=True, kw_only=True):
    """Task input of ``review-tree``: walk ``root`` (a path the agent can read)."""

    root: str
    run: str
    """Names this run's trace locations: ``review/<run>/<path>``."""
    walker: int = 0
    """Seeds this walker's shuffled order."""
    traces: bool = True
    """``False``: ignore traces and review every file (the baseline)."""
    claim_ttl_s: float = 30.0
    revisit_timeout_s: float = 120.0
    """How long to wait for files claimed by others to be reviewed, at the end."""


class TreeReport(msgspec.Struct, frozen=True, kw_only=True):
    """Task output of ``review-tree``: what one walker did."""

    walker: int
    agent_id: str
    reports: list[FileReport]
    """One per file this walker reviewed."""
    skipped_reviewed: int = 0
    """Files it found with a ``reviewed`` trace."""
    skipped_claimed: int = 0
    """Times it found a file claimed by another walker."""
    wall_s: float = 0.0


def location(run: str, rel: str) -> str:
    """The trace location of file ``rel`` in run ``run``."""
    return f"review/{run}/{rel}"


async def walk(traces: Traces | None, job: ReviewTree, agent_id: str) -> TreeReport:
    """Walk ``job.root`` in this walker's order; see the module docstring."""
    started = time.perf_counter()
    files = python_files(Path(job.root))
    random.Random(f"{job.run}/{job.walker}").shuffle(files)
    reports: list[FileReport] = []
    skipped_reviewed = skipped_claimed = 0

    async def review_one(rel: str, path: Path) -> None:
        content = await asyncio.to_thread(path.read_bytes)
        reports.append(review_source(rel, content))

    async def reviewed(loc: str) -> bool:
        assert traces is not None
        return bool(await traces.sense(loc, kinds=["reviewed"]))

    async def attempt(rel: str, path: Path) -> bool:
        """Review ``rel`` unless someone did or does: ``True`` once it is reviewed."""
        nonlocal skipped_reviewed, skipped_claimed
        assert traces is not None
        loc = location(job.run, rel)
        if await reviewed(loc):
            skipped_reviewed += 1
            return True
        claim = await traces.claim(loc, job.claim_ttl_s, holder=agent_id)
        if claim is None:
            skipped_claimed += 1
            return False
        async with claim:
            if await reviewed(loc):  # finished between our sense and our claim
                skipped_reviewed += 1
                return True
            await traces.deposit(loc, "reviewing", 1.0)
            await review_one(rel, path)
            await traces.deposit(loc, "reviewed", 1.0)
            if todos := reports[-1].todos:
                await traces.deposit(loc, "found_todo", float(todos))
        return True

    if traces is None:
        for rel, path in files:
            await review_one(rel, path)
    else:
        for kind in TRACE_KINDS:  # usually defined already by whoever started the run
            with contextlib.suppress(ConflictError):
                await traces.define(kind.kind, half_life_s=kind.half_life_s)
        pending = [(rel, path) for rel, path in files if not await attempt(rel, path)]
        deadline = time.monotonic() + job.revisit_timeout_s
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            pending = [(rel, path) for rel, path in pending if not await attempt(rel, path)]
    return TreeReport(
        walker=job.walker,
        agent_id=agent_id,
        reports=reports,
        skipped_reviewed=skipped_reviewed,
        skipped_claimed=skipped_claimed,
        wall_s=time.perf_counter() - started,
    )


agent = Agent("reviewer", max_concurrency=2)


@agent.handler("review")
async def review(ctx: TaskContext, file: ReviewFile) -> FileReport:
    """Review one file (CPU-bound, small: runs inline on the event loop).

    Then publish its ``FileReviewed`` on ``review.file_reviewed`` (key: the path; event
    id: the task id, so a retried attempt within the stream's duplicate window is not
    stored twice; the summarizer counts a path once in any case).
    """
    report = review_source(file.path, file.content)
    event = FileReviewed.of(file.run, report)
    await ctx.events.publish(FILE_REVIEWED, event, key=file.path, event_id=ctx.task_id)
    return report


@agent.handler("review-tree")
async def review_tree(ctx: TaskContext, job: ReviewTree) -> TreeReport:
    """Walk a tree, coordinating through traces (``ReviewTree``)."""
    return await walk(ctx.traces if job.traces else None, job, ctx.agent_id)


if __name__ == "__main__":
    agent.main()
