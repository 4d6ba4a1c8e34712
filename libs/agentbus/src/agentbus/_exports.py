"""Package names resolved on first use (PEP 562), for packages whose import must stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any


def lazy_exports(
    package: str,
    exports: Mapping[str, str],
    namespace: MutableMapping[str, Any],
    names: Sequence[str],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` for ``exports``.

    ``exports`` maps each public name to the module that defines it; the first access
    imports that module and stores the value in ``namespace`` (the package's
    ``globals()``), so later accesses are plain lookups. ``__dir__`` lists ``names``.
    The returned ``__getattr__`` raises ``AttributeError`` for any other name.
    """

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(names)

    return getattr_, dir_
