"""Backoff delays shared by task retries (scheduler, agent runtime) and replica restarts.

The policy is ``messages.Backoff``: exponential growth capped at ``max_s`` with "equal
jitter" (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015):
half-deterministic so delays still grow, half-random so that many clients failing
together do not retry together.
"""

from __future__ import annotations

import random

from agentbus.messages import Backoff

DEFAULT_BACKOFF = Backoff()


def backoff_s(policy: Backoff | None, n: int, *, rng: random.Random | None = None) -> float:
    """Delay in seconds before retry ``n`` (1 = the first retry) under ``policy``.

    ``d = min(max_s, initial_s * factor**(n-1))``, then a uniform draw in
    ``[d * (1 - jitter), d]``. ``policy`` ``None`` means ``Backoff()``.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"retry number starts at 1, got {n}")
    p = policy or DEFAULT_BACKOFF
    try:
        d = min(p.max_s, p.initial_s * p.factor ** (n - 1))
    except OverflowError:
        d = p.max_s
    low = d * (1.0 - p.jitter)
    return (rng or random).uniform(low, d)
