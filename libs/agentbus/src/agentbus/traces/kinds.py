"""Trace kinds as stored: one JetStream counter stream per kind (``Traces.kind``).

Kind ``k`` is the stream ``<P>_TRACES_<K>`` (subjects ``<p>.traces.<k>.>``, one message
per subject, ``allow_msg_counter``); its ``TraceKind`` (half-life, floor, forget-after)
is JSON in the stream metadata under ``agentbus.trace_kind``. The first writer of a
kind creates the stream and its configuration wins; ``max_age`` (the kind's
``forget_after_s``) makes the server forget counters nobody deposited on for that long.
"""

from __future__ import annotations

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from agentbus.bus import Bus, stream_replicas
from agentbus.errors import ContractError, RequestTimeoutError, UnavailableError
from agentbus.messages import TraceKind, encode
from agentbus.traces import _math as tm

_DUPLICATE_WINDOW_S = 120.0
_STREAM_LIST = "$JS.API.STREAM.LIST"  # nats-py 2.16 offers no subject filter here


class _StreamConfigView(msgspec.Struct):
    metadata: dict[str, str] | None = None


class _StreamView(msgspec.Struct):
    config: _StreamConfigView


class _StreamList(msgspec.Struct):
    total: int = 0
    streams: list[_StreamView] | None = None
    error: dict[str, object] | None = None


async def list_kinds(bus: Bus) -> dict[str, TraceKind]:
    """Every stored kind by name (one ``$JS.API.STREAM.LIST`` request per 256 streams).

    Streams whose kind metadata does not decode are skipped.

    Raises:
        RequestTimeoutError: the server did not answer a list request.
        UnavailableError: the server answered a list request with an error.
    """
    offset, found = 0, {}
    while True:
        request = {"subject": bus.names.traces_all(), "offset": offset}
        reply = await _list_streams(bus, msgspec.json.encode(request))
        for stream in reply.streams or []:
            raw = (stream.config.metadata or {}).get(tm.KIND_METADATA_KEY)
            if raw is None:
                continue
            try:
                k = tm.decode_kind(raw.encode())
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            found[k.kind] = k
        offset += len(reply.streams or [])
        if not reply.streams or offset >= reply.total:
            return found


async def _list_streams(bus: Bus, payload: bytes) -> _StreamList:
    timeout = bus.settings.request_timeout_s
    try:
        msg = await bus.nc.request(_STREAM_LIST, payload, timeout=timeout)
    except nats.errors.TimeoutError as exc:
        raise RequestTimeoutError(_STREAM_LIST, timeout) from exc
    reply = msgspec.json.decode(msg.data, type=_StreamList)
    if reply.error:
        raise UnavailableError(f"{_STREAM_LIST}: {reply.error}")
    return reply


async def load_or_create_kind(bus: Bus, wanted: TraceKind) -> TraceKind:
    """The stored configuration of ``wanted.kind``; its stream is created if missing.

    ``wanted`` must be complete (``_trace_math.complete_kind``). If another writer
    created the stream first, or concurrently, its configuration is returned.

    Raises:
        ContractError: the kind's stream exists but holds no kind metadata.
    """
    stream = bus.names.trace_stream(wanted.kind)
    try:
        info = await bus.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        forget_s = wanted.forget_after_s or 1.0
        config = StreamConfig(
            name=stream,
            description=f"agentbus traces of kind {wanted.kind}",
            subjects=[bus.names.traces_all(wanted.kind)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,
            max_age=forget_s,
            duplicate_window=min(_DUPLICATE_WINDOW_S, forget_s),
            allow_direct=True,
            allow_msg_counter=True,
            num_replicas=stream_replicas(bus),
            metadata={tm.KIND_METADATA_KEY: encode(wanted).decode()},
        )
        try:
            info = await bus.js.add_stream(config)
        except nats.js.errors.BadRequestError:  # created concurrently, differently
            info = await bus.js.stream_info(stream)
    raw = (info.config.metadata or {}).get(tm.KIND_METADATA_KEY)
    if raw is None:
        raise ContractError(f"stream {stream} exists but holds no {tm.KIND_METADATA_KEY}")
    return tm.decode_kind(raw.encode())
