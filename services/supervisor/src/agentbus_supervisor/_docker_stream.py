"""Decoding the Docker Engine's log stream into ``OutputLine``s (pure, no I/O).

``GET /containers/{id}/logs?stdout=1&stderr=1&follow=1&timestamps=1`` of a container
without a TTY answers with frames: an 8-byte header (byte 0 the stream, 1 = stdout,
2 = stderr; bytes 4-7 the payload length, big-endian) and the payload (Docker Engine
API, "Attach to a container", stream format). With ``timestamps=1`` each payload
starts with an RFC 3339 time with nanoseconds and a space. A log entry longer than
16 KiB comes as several entries, only the last ending in a newline; the decoder
joins them per stream. Podman's Docker-compatible API sends the same format.
aiodocker's own ``container.log()`` drops the stream byte, hence this module.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from datetime import UTC, datetime

from agentbus_supervisor.runtime import OutputLine

HEADER_BYTES = 8
_STREAMS = {1: "stdout", 2: "stderr"}
_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def parse_docker_time(value: str | None) -> datetime | None:
    """An RFC 3339 time with up to nanoseconds (Docker, Podman) as an aware datetime.

    Returns None for an empty value, Docker's zero time (``0001-01-01...``) or
    anything that does not parse.
    """
    if not value or value.startswith("0001-"):
        return None
    m = _TIME_RE.match(value.strip())
    if not m:
        return None
    head, frac, tz = m.groups()
    micros = (frac or "").ljust(6, "0")[:6]
    offset = "+00:00" if tz in (None, "Z") else tz
    try:
        return datetime.fromisoformat(f"{head}.{micros}{offset}").astimezone(UTC)
    except ValueError:
        return None


class LogFrameDecoder:
    """Turns the bytes of a multiplexed log stream into lines, chunk by chunk.

    Attributes:
        max_line_bytes: a line longer than this is emitted in pieces of that size
            (bounds the memory one replica's output can take in the supervisor).
    """

    def __init__(self, *, max_line_bytes: int = 65536, timestamps: bool = True) -> None:
        self.max_line_bytes = max_line_bytes
        self.timestamps = timestamps
        self._buffer = b""
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def feed(self, data: bytes) -> Iterator[OutputLine]:
        """Lines completed by ``data`` (frames may be split anywhere across calls)."""
        self._buffer += data
        while len(self._buffer) >= HEADER_BYTES:
            kind, length = struct.unpack(">BxxxL", self._buffer[:HEADER_BYTES])
            if len(self._buffer) < HEADER_BYTES + length:
                return
            payload = self._buffer[HEADER_BYTES : HEADER_BYTES + length]
            self._buffer = self._buffer[HEADER_BYTES + length :]
            stream = _STREAMS.get(kind)
            if stream is not None:
                yield from self._payload(stream, payload)

    def _payload(self, stream: str, payload: bytes) -> Iterator[OutputLine]:
        at: datetime | None = None
        if self.timestamps:
            stamp, sep, rest = payload.partition(b" ")
            at = parse_docker_time(stamp.decode("ascii", "replace")) if sep else None
            if at is not None:
                payload = rest
        at = at or datetime.now(UTC)
        partial = self._partial[stream]
        partial += payload
        *lines, tail = bytes(partial).split(b"\n")
        partial.clear()
        partial += tail
        for raw in lines:
            yield self._line(stream, at, raw)
        while len(partial) >= self.max_line_bytes:
            piece = bytes(partial[: self.max_line_bytes])
            del partial[: self.max_line_bytes]
            yield self._line(stream, at, piece)

    def flush(self) -> Iterator[OutputLine]:
        """The unterminated rest of each stream (at the end of the log)."""
        now = datetime.now(UTC)
        for stream, partial in self._partial.items():
            if partial:
                yield self._line(stream, now, bytes(partial))
                partial.clear()

    @staticmethod
    def _line(stream: str, at: datetime, raw: bytes) -> OutputLine:
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        return OutputLine(stream="stderr" if stream == "stderr" else "stdout", at=at, text=text)
