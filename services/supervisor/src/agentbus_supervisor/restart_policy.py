"""When and how soon a replica restarts: restart policy, backoff, crash-loop window (pure).

No I/O and no clock of its own: callers pass monotonic times, so tests drive it with
plain numbers. The rules, per replica:

- **Policy.** ``always`` restarts after any end; ``on-failure`` after an end that is a
  failure (non-zero exit, OOM kill, failed health check, missed heartbeats);
  ``never`` restarts nothing (like Kubernetes' ``restartPolicy: Never``, a replica
  found unhealthy or hung is still killed, and stays down).
- **Backoff.** The n-th consecutive restart waits ``agentbus.retry.backoff_s(backoff,
  n)`` (exponential, capped at ``max_s``, equal jitter). An instance that ran at least
  ``backoff_reset_s`` counted as healthy: the next restart starts again at n = 1.
- **Crash loop.** A restart that finds ``max_restarts`` restarts already made within
  the last ``window_s`` seconds marks the replica ``crash-loop``, and every restart
  while it stays so waits the jittered cap (``max_s``), as Kubernetes' CrashLoopBackOff
  does. The mark clears by itself once the window holds fewer restarts.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Literal

from agentbus.messages import Deployment, RestartPolicy
from agentbus.retry import backoff_s

Cause = Literal["exit", "oom", "unhealthy", "heartbeat"]
"""Why an instance ended: it exited by itself, the kernel OOM-killed it, or the
supervisor killed it for a failed health check or missed agent heartbeats."""


def is_failure(cause: Cause, exit_code: int | None) -> bool:
    """Whether an end counts as a failure (for ``on-failure``): all but a clean exit 0."""
    return cause != "exit" or exit_code != 0


def should_restart(policy: RestartPolicy, cause: Cause, exit_code: int | None) -> bool:
    """Whether ``policy`` restarts an instance that ended by ``cause`` with ``exit_code``."""
    if policy == "always":
        return True
    if policy == "on-failure":
        return is_failure(cause, exit_code)
    return False


@dataclass(frozen=True)
class RestartDecision:
    """What to do after an instance ended.

    Attributes:
        restart: whether to start a new instance.
        delay_s: seconds to wait before it (0 when ``restart`` is false).
        attempt: the consecutive restart number the delay was computed for (1-based).
        crash_loop: the replica is in crash-loop (the delay is the jittered cap).
        entered_crash_loop: this decision put it into crash-loop (emit the event once).
    """

    restart: bool
    delay_s: float = 0.0
    attempt: int = 0
    crash_loop: bool = False
    entered_crash_loop: bool = False


class RestartTracker:
    """The restart history of one replica: consecutive count and the crash-loop window.

    Attributes:
        consecutive: restarts since the last healthy instance (drives the backoff).
        crash_loop: whether the last decision left the replica in crash-loop.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._restart_times: deque[float] = deque()
        self.consecutive = 0
        self.crash_loop = False

    def restarts_within(self, window_s: float, now: float) -> int:
        """Restarts made in ``[now - window_s, now]``."""
        return sum(1 for t in self._restart_times if t >= now - window_s)

    def decide(
        self,
        deployment: Deployment,
        *,
        cause: Cause,
        exit_code: int | None,
        uptime_s: float,
        now: float,
    ) -> RestartDecision:
        """Decide on the end of an instance that ran ``uptime_s`` seconds, at time ``now``.

        ``now`` is a monotonic time in seconds; a restart it decides is recorded at
        ``now`` (the crash-loop window counts decisions, not the later starts).
        """
        if not should_restart(deployment.restart_policy, cause, exit_code):
            return RestartDecision(restart=False)
        if uptime_s >= deployment.backoff_reset_s:
            self.consecutive = 0
        window_s = deployment.crash_loop.window_s
        while self._restart_times and self._restart_times[0] < now - window_s:
            self._restart_times.popleft()
        looping = len(self._restart_times) >= deployment.crash_loop.max_restarts
        entered = looping and not self.crash_loop
        self.crash_loop = looping
        self._restart_times.append(now)
        self.consecutive += 1
        policy = deployment.backoff
        if looping:
            delay_s = self._rng.uniform(policy.max_s * (1.0 - policy.jitter), policy.max_s)
        else:
            delay_s = backoff_s(policy, self.consecutive, rng=self._rng)
        return RestartDecision(
            restart=True,
            delay_s=delay_s,
            attempt=self.consecutive,
            crash_loop=looping,
            entered_crash_loop=entered,
        )
