"""Restart decisions (pure): policies, backoff growth and reset, the crash-loop window."""

from __future__ import annotations

import random

import pytest

from agentbus.messages import Backoff, Deployment, RestartPolicy
from agentbus.messages.fleet import CrashLoop
from agentbus_supervisor.restart_policy import (
    Cause,
    RestartTracker,
    is_failure,
    should_restart,
)

NO_JITTER = Backoff(initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.0)


def dep(**kw: object) -> Deployment:
    base: dict[str, object] = {
        "name": "d",
        "command": ["x"],
        "backoff": NO_JITTER,
        "backoff_reset_s": 10.0,
        "crash_loop": CrashLoop(max_restarts=3, window_s=60.0),
    }
    base.update(kw)
    return Deployment(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "cause", "code", "restart"),
    [
        ("always", "exit", 0, True),
        ("always", "exit", 1, True),
        ("on-failure", "exit", 0, False),
        ("on-failure", "exit", 3, True),
        ("on-failure", "exit", None, True),
        ("on-failure", "oom", 137, True),
        ("on-failure", "unhealthy", 0, True),
        ("on-failure", "heartbeat", 137, True),
        ("never", "exit", 1, False),
        ("never", "oom", 137, False),
        ("never", "unhealthy", 137, False),
    ],
)
def test_policy(policy: RestartPolicy, cause: Cause, code: int | None, restart: bool) -> None:
    assert should_restart(policy, cause, code) is restart


def test_failure_is_anything_but_a_clean_exit() -> None:
    assert not is_failure("exit", 0)
    assert is_failure("oom", 0)


def test_backoff_grows_and_resets_after_healthy_uptime() -> None:
    t = RestartTracker()
    d = dep(crash_loop=CrashLoop(max_restarts=100, window_s=60.0))
    delays = [
        t.decide(d, cause="exit", exit_code=1, uptime_s=0.1, now=float(i)).delay_s for i in range(7)
    ]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # capped at max_s
    again = t.decide(d, cause="exit", exit_code=1, uptime_s=10.0, now=100.0)
    assert (again.delay_s, again.attempt) == (1.0, 1)  # ran long enough: starts over


def test_jitter_stays_within_the_equal_jitter_band() -> None:
    t = RestartTracker(rng=random.Random(7))
    d = dep(backoff=Backoff(initial_s=4.0, factor=2.0, max_s=30.0, jitter=0.5))
    delay = t.decide(d, cause="exit", exit_code=1, uptime_s=0, now=0).delay_s
    assert 2.0 <= delay <= 4.0


def test_no_restart_leaves_history_untouched() -> None:
    t = RestartTracker()
    d = dep(restart_policy="on-failure")
    assert not t.decide(d, cause="exit", exit_code=0, uptime_s=0, now=0).restart
    assert t.consecutive == 0
    assert t.restarts_within(60, 0) == 0


def test_crash_loop_after_max_restarts_in_window_then_at_the_cap() -> None:
    t = RestartTracker()
    d = dep()
    first = [t.decide(d, cause="exit", exit_code=1, uptime_s=0.1, now=float(i)) for i in range(3)]
    assert [x.crash_loop for x in first] == [False, False, False]
    fourth = t.decide(d, cause="exit", exit_code=1, uptime_s=0.1, now=3.0)
    assert fourth.crash_loop and fourth.entered_crash_loop
    assert fourth.delay_s == 30.0  # the cap (no jitter configured)
    fifth = t.decide(d, cause="oom", exit_code=137, uptime_s=0.1, now=40.0)
    assert fifth.crash_loop and not fifth.entered_crash_loop  # the event fires once
    assert fifth.delay_s == 30.0


def test_crash_loop_clears_when_the_window_empties() -> None:
    t = RestartTracker()
    d = dep()
    for i in range(4):
        last = t.decide(d, cause="exit", exit_code=1, uptime_s=0.1, now=float(i))
    assert last.crash_loop
    later = t.decide(d, cause="exit", exit_code=1, uptime_s=30.0, now=200.0)
    assert not later.crash_loop
    assert later.delay_s == 1.0  # healthy uptime reset the backoff too
    assert t.restarts_within(60.0, 200.0) == 1
