"""KV key layout of the checkpoint service.

Bucket ``<p>_checkpoints`` (history 64)::

    <A>.<T>.latest        CheckpointHead {checkpoint_id, version, updated_at}
    <A>.<T>.v.<id>        Checkpoint: one version, written once, never updated

``<A>`` and ``<T>`` are the agent id and thread id, each escaped into one key token:
bytes of ``[A-Za-z0-9_-]`` stay as they are, every other UTF-8 byte (``.``, ``=``,
``/``, spaces, non-ASCII, ...) becomes ``=HH`` (two upper-case hex digits). The
escaping is reversible and leaves ordinary ids (``echo-0``, ``thread_1``) readable, so
``<A>.>`` selects every key of one agent (for permissions: ``$KV.<bucket>.<A>.>``).

``<id>`` (the checkpoint id) is ``<version:012d>-<8 hex>``: its lexicographic order
is the version order, so listing ``<A>.<T>.v.>`` gives a thread's history in order.

Data over the inline limit lives in the Object Store ``<p>_blobs`` under the
content-addressed name ``checkpoints/sha256/<hex digest>`` (immutable: the same name
always holds the same bytes, and forks share blobs).

Room to grow: history = list ``<A>.<T>.v.>``; fork = a new thread whose first
version's ``parent_id`` names a version of another thread; retention = delete old
``v`` keys (the head is never deleted; a blob may be deleted only when no remaining
version references its digest).
"""

from __future__ import annotations

import re

from agentbus.errors import ContractError

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
CHECKPOINT_ID_RE = re.compile(r"^[0-9]{12}-[0-9a-f]{8}$")
BLOB_PREFIX = "checkpoints/sha256/"


def escape_token(value: str) -> str:
    """Escape ``value`` into one KV key token (see the module docstring)."""
    return "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in value.encode())


def unescape_token(token: str) -> str:
    """Invert ``escape_token``."""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def thread_prefix(agent_id: str, thread_id: str, *, max_chars: int = 256) -> str:
    """``<A>.<T>``: the key prefix of one thread.

    Raises:
        ContractError: an id is empty or longer than ``max_chars`` characters.
    """
    for kind, value in (("agent_id", agent_id), ("thread_id", thread_id)):
        if not value or len(value) > max_chars:
            raise ContractError(f"{kind} must have 1 to {max_chars} characters, not {len(value)}")
    return f"{escape_token(agent_id)}.{escape_token(thread_id)}"


def head_key(prefix: str) -> str:
    """Key of a thread's head pointer."""
    return f"{prefix}.latest"


def version_key(prefix: str, checkpoint_id: str) -> str:
    """Key of one checkpoint version.

    Raises:
        ContractError: ``checkpoint_id`` is not of the form ``<12 digits>-<8 hex>``.
    """
    if not CHECKPOINT_ID_RE.match(checkpoint_id):
        raise ContractError(
            f"checkpoint_id {checkpoint_id!r} is not a checkpoint id (<12 digits>-<8 hex>)"
        )
    return f"{prefix}.v.{checkpoint_id}"


def blob_name(sha256_hex: str) -> str:
    """Object Store name of checkpoint data with this SHA-256 (hex)."""
    return f"{BLOB_PREFIX}{sha256_hex}"
