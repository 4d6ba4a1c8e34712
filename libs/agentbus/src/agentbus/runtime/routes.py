"""Handler declarations: the shape of a task handler and the input type it decodes.

``Agent.handler(capability)`` registers ``async def fn(ctx, input) -> output``; the
input is decoded as the annotation of ``fn``'s second parameter (``Any`` when it has
none: plain JSON).
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentbus.runtime.context import TaskContext

Handler = Callable[[TaskContext, Any], Awaitable[Any]]
"""``async def fn(ctx: TaskContext, input) -> output`` serving one capability."""

RestoreHook = Callable[[Any], Awaitable[None]]
"""``async def fn(state)``, run after the agent's state is restored."""


@dataclass(frozen=True, slots=True)
class Route:
    """The handler of one capability and the type its input decodes as."""

    capability: str
    fn: Handler
    input_type: Any


def route(capability: str, fn: Handler) -> Route:
    """The route of ``fn``: its input type is the annotation of its second parameter."""
    hints = typing.get_type_hints(fn)
    params = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
    input_type = hints.get(params[1], Any) if len(params) > 1 else Any
    return Route(capability, fn, input_type)
