"""Polling helpers of the tests: wait for a condition with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from agentbus.errors import NotFoundError, UnavailableError

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    what: str = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    *,
    timeout_s: float = 20.0,
    every_s: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``probe`` every ``every_s`` seconds until it returns something truthy; return it.

    ``probe`` is a plain predicate (a sync callable) or an async one (its result is
    awaited). Raises ``AssertionError`` naming ``what`` and the last value when nothing
    truthy came within ``timeout_s`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: object = None
    while loop.time() < deadline:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"{what} not met within {timeout_s} s (last: {last!r})")


async def answers(request: Callable[[], Awaitable[object]]) -> bool:
    """Whether a service answers ``request()``: a reply or a not-found error does."""
    try:
        await request()
    except NotFoundError:
        return True
    except UnavailableError:  # no responder yet
        return False
    return True
