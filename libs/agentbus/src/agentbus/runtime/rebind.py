"""Binding a capability's task consumers again after they vanished under a running agent.

Only agents create the capability consumers (``Agent._bind`` at start); the task
stream comes from ``Bus.ensure()``, which every service runs on start. So when an
operator deletes a consumer, or the whole stream (a restarted scheduler recreates the
stream, with no consumers), nothing else brings the consumers back: the agent's pulls
are answered ``503`` (no responders) or ``409 Consumer Deleted``
(``agentbus.bus.pulls.Pulled.unbound``) and its tasks would stay queued until a restart.

A ``Rebinder`` turns such an answer into an *episode* per capability: one warning with
the capability, consumer, stream and status; ``bind(capability)`` (every band's
consumer; creating an existing one with the same config is a no-op) retried with
capped exponential backoff and jitter until it succeeds (the stream may not be back
yet); one info line when bound again, with the attempts and seconds it took; the
agent's ``agentbus_agent_rebinds_total{capability}`` counted once. While an episode
runs, the intake pulls nothing of that capability; when it ends, ``then(capability)``
lets the intake flag every band again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

REBIND_INITIAL_S = 0.1
"""First delay between two binding attempts of an episode, seconds."""
REBIND_MAX_S = 5.0
"""Cap of the delay between two binding attempts, seconds."""


class Rebinder:
    """Episodes of binding a capability's consumers again, at most one per capability.

    Args:
        stream: the task stream's name (for the log lines).
        bind: ``await bind(capability)`` creates every band's consumer of
            ``capability``; any exception means "try again later".
        counted: called with the capability once per episode that ended bound.
    """

    def __init__(
        self,
        stream: str,
        bind: Callable[[str], Awaitable[None]],
        *,
        counted: Callable[[str], None] | None = None,
        initial_s: float = REBIND_INITIAL_S,
        max_s: float = REBIND_MAX_S,
    ) -> None:
        self._stream = stream
        self._bind = bind
        self._counted = counted
        self._initial_s = initial_s
        self._max_s = max_s
        self._episodes: dict[str, asyncio.Task[None]] = {}
        self.episodes = 0
        """Episodes started (for tests)."""

    def rebinding(self, capability: str) -> bool:
        """Whether an episode of ``capability`` is running (pull nothing of it)."""
        return capability in self._episodes

    def lost(
        self, capability: str, consumer: str, status: str, then: Callable[[str], None]
    ) -> None:
        """A pull of ``consumer`` said it is gone: start an episode unless one runs.

        ``then(capability)`` is called once the consumers are bound again.
        """
        if capability in self._episodes:
            return
        self.episodes += 1
        logger.warning(
            "task consumer gone: binding again",
            capability=capability,
            consumer=consumer,
            stream=self._stream,
            status=status,
        )
        self._episodes[capability] = asyncio.create_task(self._episode(capability, then))

    async def close(self) -> None:
        """Cancel the running episodes (the agent is stopping)."""
        tasks = list(self._episodes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _episode(self, capability: str, then: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        attempts = 0

        def failed(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.debug(
                "binding again failed",
                capability=capability,
                error=repr(error),
                attempt=state.attempt_number,
            )

        try:  # the episode ends (and is popped) before ``then``: pulls may resume at once
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential_jitter(
                    multiplier=self._initial_s, max=self._max_s, jitter=self._initial_s
                ),
                before_sleep=failed,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._bind(capability)
        finally:
            self._episodes.pop(capability, None)
        logger.info(
            "task consumers bound again",
            capability=capability,
            stream=self._stream,
            attempts=attempts,
            duration_s=round(loop.time() - began, 3),
        )
        if self._counted is not None:
            self._counted(capability)
        then(capability)
