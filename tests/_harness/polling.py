"""Polling helpers of the tests: wait for a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentbus.errors import NotFoundError, UnavailableError

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = 20.0,
    every_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy and return it; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
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
