"""The ``reviewer`` agent of the review demo: metrics of one Python source file.

Input ``ReviewFile`` (the file's path and raw bytes, which travel over the bus: the
library moves inputs over 64 KiB through the Object Store). Output ``FileReport``:

- ``status`` ``ok`` or ``error``; ``error`` is a one-line reason (not UTF-8, or does
  not parse);
- ``lines``: ``len(source.splitlines())`` of the UTF-8 text;
- ``functions``: ``ast.FunctionDef`` + ``ast.AsyncFunctionDef`` nodes;
- ``classes``: ``ast.ClassDef`` nodes;
- ``todos``: comment tokens (``tokenize``) containing ``TODO``, ``FIXME`` or ``XXX``.
"""

from __future__ import annotations

import ast
import io
import tokenize
from typing import Literal

import msgspec

from agentbus.runtime import Agent, TaskContext

TODO_MARKERS = ("TODO", "FIXME", "XXX")


class ReviewFile(msgspec.Struct, frozen=True, kw_only=True):
    """Task input: a file's path relative to the reviewed tree, and its bytes."""

    path: str
    content: bytes


class FileReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Task output: the metrics of one file, or why there are none."""

    path: str
    status: Literal["ok", "error"]
    error: str | None = None
    lines: int | None = None
    functions: int | None = None
    classes: int | None = None
    todos: int | None = None


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


agent = Agent("reviewer", max_concurrency=2)


@agent.handler("review")
async def review(ctx: TaskContext, file: ReviewFile) -> FileReport:
    """Review one file (CPU-bound, small: runs inline on the event loop)."""
    return review_source(file.path, file.content)


if __name__ == "__main__":
    agent.main()
