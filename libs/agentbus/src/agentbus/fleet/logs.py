"""Read and follow replica output from the logs stream (``agentbus logs``).

Supervisors publish each output line of a replica as a ``LogLine`` on
``<p>.logs.<agent_id>`` (stream ``<P>_LOGS``, bounded by age, bytes and lines per
agent), whatever node it runs on, so one ordered consumer on the stream follows a
replica across restarts and moves between nodes. The agent id of replica ``r`` of
deployment ``d`` is ``d-r`` (``agentbus.names.replica_agent_id``). One replica is read with
a consumer filtered on its subject; a whole deployment with a consumer on
``<p>.logs.>`` filtered here by agent id (a subject wildcard cannot match ``d-*``),
which also picks up replicas added by a scale-up while following.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from agentbus.bus import Bus
from agentbus.bus.consumers import count_matching
from agentbus.errors import ContractError, UnavailableError
from agentbus.messages import LogLine, utcnow
from agentbus.names import replica_agent_id, replica_agent_id_pattern
from agentbus.units import parse_duration_s

_POLL_S = 0.25
"""How often a follow checks ``stop`` while no line arrives."""
_decode_line = msgspec.json.Decoder(LogLine).decode


def to_line(msg: Msg) -> LogLine:
    """A stream message as a ``LogLine``; a plain-text line (an older supervisor) too."""
    try:
        return _decode_line(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        headers = msg.headers or {}
        return LogLine(
            agent_id=msg.subject.rpartition(".")[2],
            node_id=headers.get("Agentbus-Node", ""),
            stream="stdout",
            at=msg.metadata.timestamp,
            line=msg.data.decode(errors="replace").rstrip("\n"),
            runtime_id=headers.get("Agentbus-Runtime-Id", ""),
        )


async def read_logs(
    bus: Bus,
    deployment: str,
    replica: int | None = None,
    *,
    follow: bool = False,
    since: datetime | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[LogLine]:
    """Yield the retained lines of a deployment's replicas (or one replica) in order.

    Args:
        bus: a connected bus.
        deployment: deployment name.
        replica: only this replica.
        follow: after the retained lines, keep yielding new ones until ``stop`` is set.
        since: only lines stored at or after this time (UTC).
        stop: ends a follow (checked at least every 0.25 s).

    Raises:
        UnavailableError: the logs stream does not exist.
    """
    names = bus.names
    if replica is not None:
        subject = names.log_subject(replica_agent_id(deployment, replica))
    else:
        subject = names.logs_all()
    wanted = replica_agent_id_pattern(deployment, replica)
    last_seq = (await bus.js.stream_info(names.logs_stream)).state.last_seq
    config = ConsumerConfig()
    if since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = since
    sub = await bus.js.subscribe(
        subject,
        stream=names.logs_stream,
        ordered_consumer=True,
        config=config,
        inactive_threshold=30.0,
    )
    stop = stop or asyncio.Event()
    bounded = not follow
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=_POLL_S)
            except (TimeoutError, nats.errors.TimeoutError):
                if bounded and (await sub.consumer_info()).num_pending == 0:
                    return  # nothing (more) retained
                continue
            meta = msg.metadata
            if wanted.fullmatch(msg.subject.rpartition(".")[2]):
                yield to_line(msg)
            if bounded and (meta.num_pending == 0 or meta.sequence.stream >= last_seq):
                return
    finally:
        await sub.unsubscribe()


async def last_lines_start(bus: Bus, agent_id: str, lines: int) -> int:
    """The stream sequence where the last ``lines`` retained lines of ``agent_id`` begin.

    A read of ``<p>.logs.<agent_id>`` from there gives at most ``lines`` lines, then
    the live ones (the stream's first sequence when it holds fewer). Found by a binary
    search over start sequences, each probe a ``count_matching`` (two requests): about
    2 * log2(stream length) requests in all, and no line read.

    Raises:
        ContractError: ``lines`` < 1.
        UnavailableError: the logs stream does not exist or NATS failed.
    """
    if lines < 1:
        raise ContractError(f"lines must be at least 1, got {lines}")
    stream, subject = bus.names.logs_stream, bus.names.log_subject(agent_id)

    async def pending_from(seq: int) -> int:
        return await count_matching(bus, stream, [subject], start_seq=seq)

    try:
        state = (await bus.js.stream_info(stream)).state
        low, high = max(state.first_seq, 1), state.last_seq + 1  # pending(high) == 0
        if await pending_from(low) <= lines:
            return low
        while high - low > 1:  # pending(low) >= lines > pending(high)
            middle = (low + high) // 2
            if await pending_from(middle) >= lines:
                low = middle
            else:
                high = middle
        return low
    except nats.js.errors.NotFoundError as exc:
        raise UnavailableError(f"stream {stream} does not exist") from exc
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise UnavailableError(f"cannot read stream {stream}: {exc!r}") from exc


def since_time(value: str) -> datetime:
    """A ``--since`` value: a duration back from now (``10m``) or an RFC 3339 time.

    Raises:
        ValueError: neither.
    """
    try:
        return utcnow() - timedelta(seconds=parse_duration_s(value))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a duration like 10m or a time like 2026-01-02T15:04:05Z, got {value!r}"
        ) from None
    return when if when.tzinfo else when.astimezone()
