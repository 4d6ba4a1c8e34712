"""Pure parts of the supervisor: the Docker log frame decoder, health and heartbeat
bookkeeping, log line shaping."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from agentbus_supervisor._docker_stream import LogFrameDecoder, parse_docker_time
from agentbus_supervisor.health import WATCHDOG_TICK_S, HeartbeatClock, ProbeState
from agentbus_supervisor.logs import to_log_line
from agentbus_supervisor.runtime import OutputLine, ReplicaHandle, agent_stop_grace_s


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_parse_docker_time_variants() -> None:
    want = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_docker_time("2024-05-01T10:00:00.123456789Z") == want
    assert parse_docker_time("2024-05-01T12:00:00.123456789+02:00") == want  # podman style
    assert parse_docker_time("2024-05-01T10:00:00Z") == want.replace(microsecond=0)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("garbage") is None
    assert parse_docker_time(None) is None


def test_decoder_splits_streams_lines_and_frames_across_chunks() -> None:
    data = (
        frame(1, b"2024-05-01T10:00:00.000000001Z hello\n")
        + frame(2, b"2024-05-01T10:00:01.5Z oops\n")
        + frame(1, b"2024-05-01T10:00:02Z part one ")
        + frame(1, b"2024-05-01T10:00:03Z and two\n")
    )
    dec = LogFrameDecoder()
    out: list[OutputLine] = []
    for i in range(0, len(data), 5):  # frames cut anywhere
        out += dec.feed(data[i : i + 5])
    assert [(x.stream, x.text) for x in out] == [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "part one and two"),
    ]
    assert out[1].at == datetime(2024, 5, 1, 10, 0, 1, 500000, tzinfo=UTC)
    assert list(dec.flush()) == []


def test_decoder_bounds_line_length_and_flushes_the_rest() -> None:
    dec = LogFrameDecoder(max_line_bytes=4, timestamps=False)
    out = list(dec.feed(frame(1, b"abcdefghij")))
    assert [x.text for x in out] == ["abcd", "efgh"]
    assert [x.text for x in dec.flush()] == ["ij"]


def test_probe_state_counts_consecutive_failures_after_start_period() -> None:
    s = ProbeState()
    assert not s.record(ok=False, in_start_period=True, retries=2)
    assert not s.record(ok=False, in_start_period=False, retries=2)
    assert not s.record(ok=True, in_start_period=False, retries=2)  # success resets
    assert not s.record(ok=False, in_start_period=False, retries=2)
    assert s.record(ok=False, in_start_period=False, retries=2)


def test_heartbeat_clock_arms_on_first_heartbeat_and_ignores_outages() -> None:
    c = HeartbeatClock(started_at=100.0)
    c.observe(90.0)  # the previous instance's entry: not this one's
    assert not c.overdue(now=200.0, timeout_s=15, view_since=0.0)  # never armed
    c.observe(105.0)
    assert not c.overdue(now=119.0, timeout_s=15, view_since=0.0)
    assert c.overdue(now=121.0, timeout_s=15, view_since=0.0)
    assert not c.overdue(now=121.0, timeout_s=15, view_since=None)  # view not live
    assert not c.overdue(now=121.0, timeout_s=15, view_since=110.0)  # re-synced at 110
    c.observe(None)  # entry expired: keeps the last heartbeat
    assert c.last_seen == 105.0


def test_heartbeat_clock_looks_again_when_it_could_first_be_overdue() -> None:
    c = HeartbeatClock(started_at=100.0)
    assert c.next_look_s(now=101.0, timeout_s=15, view_since=0.0) == 15  # nothing seen yet
    c.observe(105.0)
    wait_s = c.next_look_s(now=106.0, timeout_s=15, view_since=0.0)
    assert not c.overdue(now=106.0 + wait_s - 0.1, timeout_s=15, view_since=0.0)
    assert c.overdue(now=106.0 + wait_s, timeout_s=15, view_since=0.0)
    c.observe(118.0)  # a newer heartbeat pushes the next look out
    assert c.next_look_s(now=121.0, timeout_s=15, view_since=0.0) > 10
    assert c.next_look_s(now=140.0, timeout_s=15, view_since=0.0) == WATCHDOG_TICK_S  # floor
    assert c.next_look_s(now=121.0, timeout_s=15, view_since=None) == 15  # view not live


def test_log_line_truncates_on_utf8_boundaries() -> None:
    handle = ReplicaHandle(runtime_id="c1", name="n", deployment="d", replica=0, agent_id="d-0")
    at = datetime(2024, 1, 1, tzinfo=UTC)
    line = to_log_line(
        OutputLine(stream="stderr", at=at, text="é" * 10), handle=handle, node_id="n1", max_bytes=5
    )
    assert (line.line, line.truncated, line.stream, line.agent_id) == ("éé", True, "stderr", "d-0")
    short = to_log_line(
        OutputLine(stream="stdout", at=at, text="ok"), handle=handle, node_id="n1", max_bytes=5
    )
    assert (short.line, short.truncated, short.runtime_id) == ("ok", False, "c1")


def test_agent_grace_leaves_time_to_return_tasks() -> None:
    assert agent_stop_grace_s(10.0) == 8.0
    assert agent_stop_grace_s(2.0) == 1.0
    assert agent_stop_grace_s(0.1) == 0.1
