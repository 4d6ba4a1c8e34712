"""Log shipping: a replica's output lines to the logs stream as ``LogLine`` messages.

Each line becomes one JSON ``LogLine`` published on ``<p>.logs.<agent_id>``, where the
``<P>_LOGS`` stream (Limits retention) stores it, bounded per agent by
``max_msgs_per_subject`` and overall by age and bytes (``agentbus.bus``). Lines go out
as core NATS publishes, not JetStream publishes: shipping never waits for a stream
acknowledgement, so a chatty replica cannot slow its supervisor, at the price of
at-most-once delivery while NATS is unreachable (lost lines are counted in
``agentbus_supervisor_log_errors_total``).
"""

from __future__ import annotations

import asyncio

from loguru import logger

from agentbus.bus import Bus
from agentbus.messages import LogLine, encode
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.runtime import OutputLine, ReplicaHandle, Runtime


def to_log_line(
    line: OutputLine, *, handle: ReplicaHandle, node_id: str, max_bytes: int
) -> LogLine:
    """The ``LogLine`` of ``line``, its text cut to ``max_bytes`` UTF-8 bytes."""
    raw = line.text.encode()
    truncated = len(raw) > max_bytes
    text = raw[:max_bytes].decode(errors="ignore") if truncated else line.text
    return LogLine(
        agent_id=handle.agent_id,
        node_id=node_id,
        stream=line.stream,
        at=line.at,
        line=text,
        runtime_id=handle.runtime_id,
        truncated=truncated,
    )


async def ship_logs(
    bus: Bus,
    runtime: Runtime,
    handle: ReplicaHandle,
    *,
    node_id: str,
    metrics: SupervisorMetrics,
    line_max_bytes: int,
) -> None:
    """Publish every output line of ``handle`` until the replica's output ends."""
    subject = bus.names.log_subject(handle.agent_id)
    try:
        async for line in runtime.logs(handle):
            msg = to_log_line(line, handle=handle, node_id=node_id, max_bytes=line_max_bytes)
            try:
                await bus.nc.publish(subject, encode(msg))
                metrics.log_lines.inc()
            except Exception:
                metrics.log_errors.inc()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("log shipping ended", agent_id=handle.agent_id, error=repr(exc))
