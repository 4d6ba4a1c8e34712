"""Human units for quantities: durations, sizes, CPU cores (parse and format).

Used by fleet files (``agentbus.fleet.spec``) and CLI options (``logs --since``).
Durations: ``500ms``, ``30s``, ``2m``, ``1h30m`` or a number of seconds. Sizes:
``Ki/Mi/Gi/Ti`` are powers of 1024, ``K/M/G/T`` powers of 1000 (Kubernetes
quantities), with an optional trailing ``B``. CPUs: ``0.5`` or ``500m`` (millicores).
"""

from __future__ import annotations

import math
import re

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "B": 1} | {
    f"{p}{suffix}": base**exp
    for exp, p in enumerate("KMGT", start=1)
    for base, suffix in ((1000, ""), (1000, "B"), (1024, "i"), (1024, "iB"))
}
_SIZE_UNITS |= {"k": 1000, "kB": 1000}


def _plain_number(value: object) -> float | None:
    """``value`` as a float if it is a finite number >= 0 or a decimal string, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str) and _NUMBER_RE.fullmatch(text := value.strip()):
        return float(text)
    return None


def parse_duration_s(value: object) -> float:
    """Seconds from ``30``, ``1.5``, ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h30m"``.

    Raises:
        ValueError: not a non-negative duration (message says what was expected).
    """
    if (number := _plain_number(value)) is not None:
        return number
    if isinstance(value, str) and _DURATION_RE.fullmatch(text := value.strip()):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    raise ValueError(f"expected a duration like 500ms, 30s or 2m, got {value!r}")


def parse_size_bytes(value: object) -> int:
    """Bytes from ``1048576``, ``"512Mi"``, ``"1Gi"``, ``"500M"``, ``"1G"``, ``"64KiB"``.

    ``Ki/Mi/Gi/Ti`` are powers of 1024, ``K/M/G/T`` powers of 1000 (Kubernetes
    quantities); a fractional result is rounded down to whole bytes.

    Raises:
        ValueError: not a non-negative size (``512m`` is refused as ambiguous).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        number, unit = m.groups()
        if unit in _SIZE_UNITS:
            return int(float(number) * _SIZE_UNITS[unit])
        if unit.lower() in ("m", "mb", "g", "gb", "t", "tb"):
            raise ValueError(
                f"{value!r} is ambiguous: write {number}{unit[0].upper()}i "
                f"(powers of 1024) or {number}{unit[0].upper()} (powers of 1000)"
            )
    raise ValueError(f"expected a size like 512Mi or 1G, got {value!r}")


def parse_cpus(value: object) -> float:
    """CPU cores from ``0.5``, ``2``, ``"0.5"`` or ``"500m"`` (millicores).

    Raises:
        ValueError: not a non-negative number of cores.
    """
    if (number := _plain_number(value)) is not None:
        return number
    if isinstance(value, str) and re.fullmatch(r"\d+m", text := value.strip()):
        return int(text[:-1]) / 1000
    raise ValueError(f"expected CPU cores like 0.5 or 500m, got {value!r}")


def format_size_bytes(size_bytes: int) -> str:
    """``536870912`` -> ``512Mi``, ``1610612736`` -> ``1.5Gi`` (the largest binary unit)."""
    value, unit = float(size_bytes), ""
    for next_unit in ("Ki", "Mi", "Gi", "Ti"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"


def format_duration_s(seconds: float) -> str:
    """``42`` -> ``42s``, ``192`` -> ``3m12s``, ``7500`` -> ``2h05m``, ``273600`` -> ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
