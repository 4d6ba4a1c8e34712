"""What the review demo found (``ReviewResult``) and how it is printed and saved.

One ``ReviewResult`` per mode run by ``agentbus.demo.review.review``: the file reports, the
coverage counts and the wall time; ``print_summary`` and ``print_comparison`` print
them with rich, ``to_json``/``comparison_json`` give the ``--json`` documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from rich.console import Console
from rich.table import Table

from agentbus.agents.reviewer import FileReport
from agentbus.agents.summarizer import totals_of

Mode = Literal["queue", "stigmergy", "no-traces"]
MODES: tuple[Mode, ...] = ("queue", "stigmergy", "no-traces")


@dataclass
class ReviewResult:
    """What the demo found: one report per file (sorted by path) and a summary."""

    root: str
    runtime: str
    replicas: int
    reports: list[FileReport] = field(default_factory=list)
    wall_s: float = 0.0
    mode: Mode = "queue"
    files_total: int = 0
    """``*.py`` files in the tree."""
    reviewed: int = 0
    """Files some agent reviewed (at least once)."""
    reviews: int = 0
    """Reviews made in all (a file reviewed twice counts twice)."""
    hot_spots: list[tuple[str, float]] = field(default_factory=list)
    """Files with the most TODOs: from ``found_todo`` traces (stigmergy), else reports."""
    summarizer_totals: dict[str, int] | None = None
    """The summarizer's totals, from events (queue mode): equal to ``totals()``."""

    @property
    def ok(self) -> int:
        """Files reviewed successfully."""
        return sum(r.status == "ok" for r in self.reports)

    @property
    def errors(self) -> int:
        """Files that could not be reviewed (undecodable, unparsable, task failed)."""
        return len(self.reports) - self.ok

    def totals(self) -> dict[str, int]:
        """The report's figures summed directly: files, ok, errors, lines, functions..."""
        return totals_of("", self.reports).figures()

    def summary(self) -> dict[str, Any]:
        """Counts and timing of the run, as a JSON-ready dict.

        ``files``, ``ok``, ``errors``, ``wall_s``, ``files_per_s``; and ``mode``,
        ``files_total``, ``files_reviewed``, ``coverage_ratio``, ``reviews``,
        ``duplicate_reviews`` (reviews beyond one per reviewed file), ``hot_spots``;
        ``totals`` (``totals()``) and, when a summarizer ran, ``summarizer_totals``.
        """
        n = len(self.reports)
        hot = self.hot_spots or [(r.path, float(r.todos or 0)) for r in self.top_by_todos()]
        return {
            "root": self.root,
            "runtime": self.runtime,
            "replicas": self.replicas,
            "mode": self.mode,
            "files": n,
            "ok": self.ok,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "files_per_s": round(n / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            "files_total": self.files_total,
            "files_reviewed": self.reviewed,
            "coverage_ratio": round(self.reviewed / self.files_total, 4)
            if self.files_total
            else 1.0,
            "reviews": self.reviews,
            "duplicate_reviews": max(0, self.reviews - self.reviewed),
            "hot_spots": [{"path": p, "todos": round(s, 3)} for p, s in hot],
            "totals": self.totals(),
        } | (
            {"summarizer_totals": self.summarizer_totals}
            if self.summarizer_totals is not None
            else {}
        )

    def top_by_todos(self, n: int = 10) -> list[FileReport]:
        """The ``n`` files with the most TODOs (ties by path), none without."""
        todo = [r for r in self.reports if r.todos]
        return sorted(todo, key=lambda r: (-(r.todos or 0), r.path))[:n]

    def top_by_functions(self, n: int = 10) -> list[FileReport]:
        """The ``n`` files with the most functions (ties by path)."""
        ok = [r for r in self.reports if r.status == "ok"]
        return sorted(ok, key=lambda r: (-(r.functions or 0), r.path))[:n]

    def to_json(self) -> bytes:
        """``{"files": [FileReport, ...], "summary": {...}}`` as indented JSON."""
        doc = {"files": self.reports, "summary": self.summary()}
        return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def print_summary(result: ReviewResult, console: Console) -> None:
    """Print the counts, timing and the ten files with the most functions."""
    s = result.summary()
    console.print(
        f"files: {s['files']}  ok: {s['ok']}  errors: {s['errors']}  "
        f"wall: {s['wall_s']:.2f} s  rate: {s['files_per_s']} files/s  "
        f"({s['replicas']} replicas, {s['runtime']})"
    )
    console.print(
        f"mode: {s['mode']}  coverage: {s['coverage_ratio']:.1%} "
        f"({s['files_reviewed']}/{s['files_total']} files reviewed)  "
        f"duplicate reviews: {s['duplicate_reviews']}",
        highlight=False,
    )
    if result.hot_spots:
        console.print(
            "hot spots (found_todo traces): "
            + ", ".join(f"{p} ({v:.3g})" for p, v in result.hot_spots[:5]),
            highlight=False,
        )
    table = Table(title="most functions")
    for col, justify in (
        ("file", "left"),
        ("functions", "right"),
        ("classes", "right"),
        ("lines", "right"),
        ("todos", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in result.top_by_functions():
        table.add_row(r.path, str(r.functions), str(r.classes), str(r.lines), str(r.todos))
    console.print(table)
    for r in [r for r in result.reports if r.status == "error"][:10]:
        console.print(f"[red]error[/red] {r.path}: {r.error}", highlight=False)


def print_comparison(results: list[ReviewResult], console: Console) -> None:
    """Print coverage, duplicate reviews and wall time of each mode side by side."""
    table = Table(
        title=f"review modes, {results[0].replicas} agents, {results[0].files_total} files"
    )
    for col in ("mode", "coverage", "reviewed", "reviews", "duplicates", "wall s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in results:
        s = r.summary()
        cells = (
            f"{s['coverage_ratio']:.1%}",
            s["files_reviewed"],
            s["reviews"],
            s["duplicate_reviews"],
            f"{s['wall_s']:.2f}",
        )
        table.add_row(s["mode"], *(str(c) for c in cells))
    console.print(table)


def comparison_json(results: list[ReviewResult]) -> bytes:
    """``{"comparison": [summary, ...]}`` (one summary per mode) as indented JSON."""
    doc = {"comparison": [r.summary() for r in results]}
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
