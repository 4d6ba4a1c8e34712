"""Topic names: validation, the partition rule and subscription filters.

Re-exported by ``agentbus.names``; ``docs/protocol.md``, "Events between agents".
"""

from __future__ import annotations

import re

from agentbus.errors import ContractError

TOPIC_PARTITIONS = 8
"""Partitions of keyed events per topic (``Names.topic_subject``): part of the contract."""
TOPIC_MAX_TOKENS = 8
"""A topic has 1-8 dot-separated tokens."""
_TOPIC_TOKEN_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
TOPIC_RE = re.compile(r"^[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}){0,7}$")
"""A whole topic (no wildcards), as one regular expression (for OpenAPI documents)."""


def check_topic(topic: str) -> str:
    """Validate an event topic: 1-8 dot-separated tokens of ``[a-z0-9_-]``.

    Raises:
        ContractError: the topic is not valid (wildcards are for patterns only).
    """
    return _check_topic(topic, wildcards=False)


def check_topic_pattern(pattern: str) -> str:
    """Validate a subscription pattern: a topic whose tokens may also be ``*`` or ``>``.

    ``*`` stands for one token, ``>`` (last token only) for one or more.

    Raises:
        ContractError: the pattern is not valid.
    """
    return _check_topic(pattern, wildcards=True)


def _check_topic(value: str, *, wildcards: bool) -> str:
    kind = "topic pattern" if wildcards else "topic"
    tokens = value.split(".")
    if not 1 <= len(tokens) <= TOPIC_MAX_TOKENS:
        raise ContractError(f"{kind} {value!r} must have 1-{TOPIC_MAX_TOKENS} dot-separated tokens")
    for i, t in enumerate(tokens):
        if wildcards and (t == "*" or (t == ">" and i == len(tokens) - 1)):
            continue
        if not _TOPIC_TOKEN_RE.match(t):
            hint = (
                " (wildcards * and > only in subscription patterns)" if "*" in t or ">" in t else ""
            )
            raise ContractError(
                f"{kind} {value!r}: token {t!r} is not 1-64 characters of [a-z0-9_-]{hint}"
            )
    return value


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a hash of ``data`` (offset basis 2166136261, prime 16777619)."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def topic_part(key: str | None) -> str:
    """The partition token of an event: ``_`` without key, else ``k<fnv1a_32(key) % 8>``."""
    if key is None:
        return "_"
    return f"k{fnv1a_32(key.encode()) % TOPIC_PARTITIONS}"


TOPIC_PARTS: tuple[str, ...] = ("_", *(f"k{n}" for n in range(TOPIC_PARTITIONS)))
"""Every partition token: ``_`` (keyless events), ``k0`` .. ``k7``."""


def topic_filters(prefix: str, pattern: str, part: str | None = None) -> list[str]:
    """Filter subjects of subscription ``pattern``, of one partition or of all.

    A pattern without ``>`` is one filter, ``<p>.topics.<pattern>.<part>``; one ending
    in ``>`` is expanded to one filter per topic length it can match (``>`` stands for
    1 .. 8 - n tokens), so that each filter can end with the partition token:
    ``a.>`` of partition ``k3`` is ``<p>.topics.a.*.k3``, ``<p>.topics.a.*.*.k3``, and
    so on up to 8 topic tokens. ``part`` None: every partition (``*``).
    """
    tail = part or "*"
    tokens = pattern.split(".")
    if tokens[-1] != ">":
        return [f"{prefix}.topics.{pattern}.{tail}"]
    head = tokens[:-1]
    return [
        ".".join([prefix, "topics", *head, *(["*"] * n), tail])
        for n in range(1, TOPIC_MAX_TOKENS - len(head) + 1)
    ]
