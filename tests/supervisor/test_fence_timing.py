"""The fence's pure parts: its timing checks, its clock, its unfencing (fake mirrors)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agentbus.bus import Bus
from agentbus.bus.contract import REGISTRY_TTL_S
from agentbus.kv.mirror import KvMirror
from agentbus_supervisor import fence as fence_module
from agentbus_supervisor.fence import (
    FENCE_STOP_GRACE_S,
    Fence,
    FenceClock,
    FenceTiming,
    check_timing,
)
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.settings import SupervisorSettings


@pytest.mark.parametrize("heartbeat_s", [0.2, 1.0, 2.0, 3.0])
def test_default_fence_ends_a_heartbeat_before_the_node_entry_expires(
    heartbeat_s: float,
) -> None:
    timing = SupervisorSettings(node_id="n", heartbeat_s=heartbeat_s).fence_timing
    assert 0 < timing.heartbeat_timeout_s < heartbeat_s
    done_s = timing.fence_after_s + timing.heartbeat_timeout_s + FENCE_STOP_GRACE_S
    assert done_s + max(heartbeat_s, 1.0) == pytest.approx(REGISTRY_TTL_S)


def test_default_with_the_default_heartbeat() -> None:
    assert SupervisorSettings(node_id="n").fence_timing.fence_after_s == 5.5


def test_explicit_fence_after_is_kept() -> None:
    settings = SupervisorSettings(node_id="n", heartbeat_s=0.2, fence_after_s=2.0)
    assert settings.fence_timing.fence_after_s == 2.0


@pytest.mark.parametrize(
    ("heartbeat_s", "fence_after_s", "timeout_s"),
    [
        (2.0, REGISTRY_TTL_S, None),  # no earlier than the expiry
        (0.2, REGISTRY_TTL_S - FENCE_STOP_GRACE_S, None),  # the kill would end too late
        (1.0, 7.0, 2.0),  # a slow put eats the margin
        (8.0, None, None),  # the default would be < 0
    ],
)
def test_a_fence_that_could_end_after_the_expiry_is_refused(
    heartbeat_s: float, fence_after_s: float | None, timeout_s: float | None
) -> None:
    with pytest.raises(ValueError, match="fence"):
        check_timing(heartbeat_s, fence_after_s, timeout_s)
    fields: dict[str, Any] = {"fence_after_s": fence_after_s, "heartbeat_timeout_s": timeout_s}
    with pytest.raises(ValidationError):
        SupervisorSettings(node_id="n", heartbeat_s=heartbeat_s, **fields)


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_FENCE_AFTER_S", "3.5")
    assert SupervisorSettings(node_id="n").fence_timing.fence_after_s == 3.5


def test_clock_cuts_off_after_fence_after_s_of_silence() -> None:
    clock = FenceClock(fence_after_s=6.0, last_beat=100.0)
    assert not clock.cut_off(106.0)
    assert clock.until_cut_off_s(104.0) == 2.0
    assert clock.cut_off(106.1)
    assert clock.until_cut_off_s(107.0) == 0.0
    clock.beat(107.0)
    assert not clock.cut_off(112.0)
    clock.beat(90.0)  # a late report of an earlier beat does not move the clock back
    assert clock.silent_s(112.0) == 5.0


class _Mirror:
    """A mirror whose first replay never ends (a watch that stopped making progress)."""

    def __init__(self) -> None:
        self.asked = 0

    async def resync(self) -> None:
        self.asked += 1
        if self.asked == 1:
            await asyncio.Event().wait()


class _Events:
    """What ``Bus.publish_event`` was given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Any]] = []

    async def publish_event(self, entity: str, kind: str, event: Any) -> None:
        self.published.append((entity, kind, event))


async def test_an_unfencing_whose_replay_hangs_is_tried_again_on_the_next_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fence_module, "RESYNC_TIMEOUT_S", 0.2)
    mirror, unfenced, events = _Mirror(), asyncio.Event(), _Events()
    fence = Fence(
        bus=cast(Bus, events),
        node_id="n1",
        timing=FenceTiming(fence_after_s=5.0, heartbeat_timeout_s=1.0, rejoin_settle_s=0.0),
        metrics=SupervisorMetrics(CollectorRegistry()),
        mirrors=[cast(KvMirror[Any], mirror)],
        on_fence=lambda: None,
        on_unfence=unfenced.set,
    )
    fence.fenced = True
    fence.beat(entry_lost=True)  # the entry had expired while cut off
    assert fence._unfencing is not None
    await asyncio.wait_for(fence._unfencing, 5)  # gave up on the hanging replay
    assert fence.fenced and not unfenced.is_set() and mirror.asked == 1

    fence.beat(entry_lost=False)  # replaces the first beat's write: still a lost entry
    assert fence._unfencing is not None
    await asyncio.wait_for(fence._unfencing, 5)
    assert not fence.fenced and unfenced.is_set() and mirror.asked == 2
    assert [(kind, e.reason) for _, kind, e in events.published][1] == ("unfenced", "lost entry")
