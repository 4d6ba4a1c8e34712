"""Third-party modules loaded only when first used, for every agentbus process.

nats-py imports ``aiohttp`` at import time, for its WebSocket transport alone; agentbus
connects over TCP (``nats://``, ``tls://``). Loaded eagerly, aiohttp is the largest
share of an idle agent's private memory (about a third) and of its import time.

``defer`` puts an empty module object for it in ``sys.modules`` whose code runs, in
that same object, on the first access to an attribute it does not have yet (a
``ws://`` connection, ``from aiohttp import web``, aiodocker in the supervisor): code
that uses the module sees no difference. Unlike ``importlib.util.LazyLoader``, a later
``import aiohttp`` (which reads ``__spec__``) does not load it; ``__path__`` is left
out until then, so importing a submodule first runs the package itself. The code runs
under a lock: a thread touching the module meanwhile waits for all of it, as an
import would.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED: tuple[str, ...] = ("aiohttp",)
"""Modules whose loading waits for their first use."""


_LOCK = threading.RLock()
"""Held while a deferred module's code runs: other threads wait for the whole module."""
_LOADING: set[str] = set()
"""Deferred modules whose code is running (in the thread holding ``_LOCK``)."""


class _Deferred(types.ModuleType):
    """A module whose code has not run yet; runs it on a missing attribute."""

    def __getattr__(self, attr: str) -> Any:
        spec = self.__spec__
        assert spec is not None  # set by ``defer``
        assert spec.loader is not None
        with _LOCK:
            if type(self) is not _Deferred or spec.name in _LOADING:
                # loaded by another thread meanwhile (plain lookup now), or our own
                # module code asking for what it has not defined yet (as any import)
                return types.ModuleType.__getattribute__(self, attr)
            _LOADING.add(spec.name)
            try:
                if spec.submodule_search_locations is not None:
                    self.__path__ = list(spec.submodule_search_locations)
                spec.loader.exec_module(self)
            except BaseException:
                sys.modules.pop(spec.name, None)  # a later import tries again, eagerly
                raise
            finally:
                _LOADING.discard(spec.name)
            self.__class__ = types.ModuleType  # type: ignore[assignment]  # loaded from now on
        return getattr(self, attr)


def defer(name: str) -> None:
    """Make loading top-level module ``name`` wait for its first use.

    Nothing if it is already imported or not installed.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    module.__dict__.pop("__path__", None)
    module.__class__ = _Deferred
    sys.modules[name] = module


def defer_all() -> None:
    """``defer`` every module of ``DEFERRED``."""
    for name in DEFERRED:
        defer(name)
