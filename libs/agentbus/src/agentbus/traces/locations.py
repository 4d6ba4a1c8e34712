"""Trace locations as subject tokens and KV keys, reversibly.

A trace counter lives on ``<p>.traces.<kind>.<epoch>.<encode_location(location)>``.
"""

from __future__ import annotations

from agentbus.errors import ContractError
from agentbus.names import TOKEN_SAFE_BYTES, escape_token

LOCATION_MAX_BYTES = 1024
"""Longest trace location, in bytes of UTF-8."""


def encode_location(location: str) -> str:
    """Encode any location string as dot-separated subject/KV-key tokens, reversibly.

    The location is split on ``/``; each segment becomes one token (``escape_token``:
    UTF-8 bytes in ``[A-Za-z0-9_-]`` stay, every other byte becomes ``=XX``, upper-case
    hex), and an empty segment becomes ``=``. So ``src/a b.py`` is ``src.a=20b=2Epy``
    and a prefix of whole segments is a prefix of tokens
    (``<p>.traces.<kind>.*.src.>`` selects ``src/...``). The tokens are valid NATS
    subject tokens and KV key parts.

    Raises:
        ContractError: ``location`` is empty or longer than ``LOCATION_MAX_BYTES`` in UTF-8.
    """
    raw = location.encode("utf-8")
    if not raw or len(raw) > LOCATION_MAX_BYTES:
        raise ContractError(
            f"a trace location must be 1-{LOCATION_MAX_BYTES} bytes of UTF-8, got {len(raw)}"
        )
    return ".".join(escape_token(segment) or "=" for segment in location.split("/"))


def decode_location(key: str) -> str:
    """The location ``encode_location`` turned into ``key``.

    Raises:
        ContractError: ``key`` is not an encoded location.
    """
    segments = []
    for token in key.split("."):
        if token == "=":
            segments.append(b"")
            continue
        out, i = bytearray(), 0
        while i < len(token):
            c = token[i]
            if c == "=":
                hex_ = token[i + 1 : i + 3]
                if len(hex_) != 2 or any(h not in "0123456789ABCDEF" for h in hex_):
                    raise ContractError(f"bad escape in location key {key!r}")
                out.append(int(hex_, 16))
                i += 3
            elif ord(c) in TOKEN_SAFE_BYTES:
                out.append(ord(c))
                i += 1
            else:
                raise ContractError(f"character {c!r} cannot appear in location key {key!r}")
        if not out:
            raise ContractError(f"empty token in location key {key!r}")
        segments.append(bytes(out))
    try:
        return b"/".join(segments).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"location key {key!r} is not UTF-8: {exc}") from None
