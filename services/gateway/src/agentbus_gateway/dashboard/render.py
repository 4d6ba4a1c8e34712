"""Templates of the dashboard: the Jinja environment, its filters, page context.

Jinja escapes every value (``autoescape``); task inputs, outputs and event payloads
are shown as text, never as markup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"
"""Where ``scripts/web.sh`` copies htmx and its extensions from npm (gitignored)."""
VENDOR_FILES = ("htmx.min.js", "sse.js", "json-enc.js")
PREVIEW_CHARS = 4000
"""Most characters of a task input or output shown on its page."""
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired", "dead"})
RESUBMITTABLE = frozenset({"dead", "failed", "expired"})

NAV = (
    ("overview", "/", "Overview"),
    ("tasks", "/tasks", "Tasks"),
    ("deployments", "/deployments", "Deployments"),
    ("agents", "/agents", "Agents"),
    ("checkpoints", "/checkpoints", "Checkpoints"),
    ("traces", "/traces", "Traces"),
    ("logs", "/logs", "Logs"),
    ("approvals", "/approvals", "Approvals"),
    ("audit", "/audit", "Audit"),
)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """``value`` as indented JSON, cut to ``limit`` characters (with a note)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 string (as the API sends times) as an aware datetime, else None."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: Any) -> str:
    """How long before now ``value`` (a time) was: ``4 s ago``, ``3 min ago``."""
    when = parse_time(value)
    if when is None:
        return "—"
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def clock(value: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` UTC, or ``—``."""
    when = parse_time(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "—"


def duration(start: Any, end: Any) -> str:
    """The span from ``start`` to ``end`` (now when ``end`` is missing)."""
    began, ended = parse_time(start), parse_time(end) or datetime.now(UTC)
    return _span((ended - began).total_seconds()) if began else "—"


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def size(value: Any) -> str:
    """A byte count as ``12.3 MiB`` (``—`` when unknown)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return "—"


def percent(value: Any) -> str:
    """A CPU share in percent (``12.5 %``), ``—`` when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    return f"{value:.1f} %"


def environment() -> Environment:
    """The dashboard's Jinja environment (autoescaped, with the filters above)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        preview=preview, ago=ago, clock=clock, size=size, percent=percent, duration=duration
    )
    env.globals.update(nav=NAV, terminal=TERMINAL, resubmittable=RESUBMITTABLE)
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Litestar's template configuration for the dashboard."""
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def missing_vendor_files() -> list[str]:
    """The browser libraries ``scripts/web.sh`` has not copied into ``VENDOR``."""
    return [name for name in VENDOR_FILES if not (VENDOR / name).is_file()]
