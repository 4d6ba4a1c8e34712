"""KV key layout of the checkpoint service (bucket ``<p>_checkpoints``, history 1).

One thread of agent ``<A>``, thread ``<T>`` and namespace ``""`` has the key prefix
``<A>.<T>``; namespace ``<N>`` of that thread has ``<A>.<T>.ns.<N>``. Under a prefix::

    <prefix>.latest                    CheckpointHead: latest version, oldest kept, retention
    <prefix>.v.<n:012d>.rec            Checkpoint record of version n with its data inline
                                       (base64 in JSON; none when in the Object Store), no writes
    <prefix>.v.<n:012d>.data           raw data of a version stored before the data moved
                                       into the record (read, never written)
    <prefix>.id.<escaped id>           CheckpointIndex: checkpoint id -> version
    <prefix>.w.<escaped id>            CheckpointWrites: pending writes of a checkpoint id
    <prefix>.b.<32 hex>                CheckpointIndex: the version whose data is object
                                       <prefix>/<32 hex> (the orphan sweep's index)

Pending writes are keyed by checkpoint id, not version: they may arrive before their
checkpoint is stored (LangGraph's default "async" durability sends both at once).

``<A>``, ``<T>``, ``<N>`` and ids are escaped into one key token each: bytes of
``[A-Za-z0-9_-]`` stay as they are, every other UTF-8 byte (``.``, ``=``, ``/``,
spaces, non-ASCII, ...) becomes ``=HH`` (two upper-case hex digits). The escaping is
reversible and leaves ordinary ids (``echo-0``, ``thread_1``) readable, so
``nats kv get <p>_checkpoints echo-0.job-7.latest`` shows a head, ``<A>.>`` selects
every key of one agent (permissions: ``$KV.<bucket>.<A>.>``), and ``<A>.<T>.>`` every
key of a thread with its namespaces (a thread delete purges that subject).

Versions count 1, 2, 3, ... per thread and namespace and are zero-padded, so listing
``<prefix>.v.*.rec`` gives the history in order; versions ``oldest..latest`` of the
head may exist, older ones were pruned (and ``DeleteCheckpoints`` may leave gaps;
numbers are not given out again, see ``agentbus_checkpoint.head``).

Data over the inline limit lives in the Object Store ``<p>_checkpoint_blobs`` as
``<prefix>/<32 hex>`` (pending-write values as ``<prefix>/w/<32 hex>``): the name
says whose it is, and deleting a version deletes its objects. A put that references
an object also writes ``<prefix>.b.<32 hex>`` right after its record, so one KV lookup
(or one subject listing per thread) tells whether an object is referenced
(``agentbus_checkpoint.orphans``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentbus.errors import ContractError
from agentbus.names import escape_token
from agentbus.state.uploads import thread_key_prefix

__all__ = [
    "BlobName",
    "ThreadKeys",
    "escape_token",
    "head_filters",
    "parse_head_key",
    "thread_wildcard",
    "unescape_token",
]

KEY_PREFIX_MAX_CHARS = 1024
"""Longest escaped thread key prefix: with a version or escaped checkpoint id suffix
and the ``$JS.API.DIRECT.GET...`` subject around it (or, for objects, base64 in
``$O.<bucket>.M.<name>``), a subject stays far below nats-server's 4 KiB protocol line,
over which the server closes the connection for good."""

_BLOB_NAME_RE = re.compile(r"^(?P<prefix>[^/]+)/(?P<write>w/)?(?P<token>[0-9a-f]{32})$")


def unescape_token(token: str) -> str:
    """Invert ``escape_token``.

    Raises:
        ContractError: ``token`` is not an escaped token.
    """
    out = bytearray()
    i = 0
    try:
        while i < len(token):
            if token[i] == "=":
                out.append(int(token[i + 1 : i + 3], 16))
                i += 3
            else:
                out += token[i].encode()
                i += 1
        return out.decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"{token!r} is not an escaped key token") from exc


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """Keys of one thread (or namespace); build with ``ThreadKeys.of``."""

    agent_id: str
    thread_id: str
    namespace: str
    prefix: str

    @classmethod
    def of(
        cls, agent_id: str, thread_id: str, namespace: str = "", *, max_chars: int = 256
    ) -> ThreadKeys:
        """The keys of ``(agent_id, thread_id, namespace)``.

        Raises:
            ContractError: ``agent_id`` or ``thread_id`` is empty, an id is longer
                than ``max_chars`` characters, or the escaped key prefix longer than
                ``KEY_PREFIX_MAX_CHARS``.
        """
        for kind, value in (("agent_id", agent_id), ("thread_id", thread_id)):
            if not value:
                raise ContractError(f"{kind} must not be empty")
        for kind, value in (
            ("agent_id", agent_id),
            ("thread_id", thread_id),
            ("namespace", namespace),
        ):
            if len(value) > max_chars:
                raise ContractError(f"{kind} has {len(value)} characters, at most {max_chars}")
        prefix = thread_key_prefix(agent_id, thread_id, namespace)
        if len(prefix) > KEY_PREFIX_MAX_CHARS:
            raise ContractError(
                f"agent_id, thread_id and namespace take {len(prefix)} characters as a key, "
                f"at most {KEY_PREFIX_MAX_CHARS} (a byte outside [A-Za-z0-9_-] takes 3)"
            )
        return cls(agent_id, thread_id, namespace, prefix)

    @property
    def head(self) -> str:
        """Key of the head pointer."""
        return f"{self.prefix}.latest"

    def record(self, version: int) -> str:
        """Key of version ``version``'s record."""
        return f"{self.prefix}.v.{version:012d}.rec"

    def data(self, version: int) -> str:
        """Key of version ``version``'s inline data."""
        return f"{self.prefix}.v.{version:012d}.data"

    def writes(self, checkpoint_id: str) -> str:
        """Key of the pending writes of ``checkpoint_id``."""
        return f"{self.prefix}.w.{escape_token(checkpoint_id)}"

    def version_keys(self, version: int) -> str:
        """Wildcard over every key of version ``version`` (record, data)."""
        return f"{self.prefix}.v.{version:012d}.>"

    def index(self, checkpoint_id: str) -> str:
        """Key of the id -> version index entry of ``checkpoint_id``."""
        return f"{self.prefix}.id.{escape_token(checkpoint_id)}"

    def blob_name(self, token_hex: str, *, write: bool = False) -> str:
        """Object Store name of data of this thread (``token_hex``: 32 hex digits)."""
        return f"{self.prefix}/w/{token_hex}" if write else f"{self.prefix}/{token_hex}"

    def blob_index(self, name: str) -> str:
        """Key recording which version references checkpoint data object ``name``.

        Raises:
            ContractError: ``name`` is not a checkpoint data object of this thread.
        """
        m = _BLOB_NAME_RE.match(name)
        if m is None or m["prefix"] != self.prefix or m["write"]:
            raise ContractError(f"{name!r} is not a checkpoint data object of {self.prefix!r}")
        return f"{self.prefix}.b.{m['token']}"


@dataclass(frozen=True, slots=True)
class BlobName:
    """A parsed Object Store name of checkpoint data: thread key prefix, kind, token."""

    prefix: str
    write: bool
    token: str

    @classmethod
    def parse(cls, name: str) -> BlobName | None:
        """The parts of ``name``, None if it is not a checkpoint object name."""
        m = _BLOB_NAME_RE.match(name)
        return cls(m["prefix"], bool(m["write"]), m["token"]) if m else None

    def thread(self, *, max_chars: int = 256) -> ThreadKeys | None:
        """The keys of the thread the name belongs to, None if the prefix is not one."""
        parts = self.prefix.split(".")
        try:
            tk = ThreadKeys.of(*parse_head_key(".".join([*parts, "latest"])), max_chars=max_chars)
        except ContractError:
            return None
        return tk if tk.prefix == self.prefix else None


def thread_wildcard(agent_id: str, thread_id: str) -> str:
    """Wildcard over every key of a thread and its namespaces."""
    return f"{escape_token(agent_id)}.{escape_token(thread_id)}.>"


def head_filters(agent_id: str, thread_id: str | None = None) -> list[str]:
    """Key filters matching the heads of an agent's threads (or one thread) and namespaces."""
    a = escape_token(agent_id)
    t = escape_token(thread_id) if thread_id is not None else "*"
    return [f"{a}.{t}.latest", f"{a}.{t}.ns.*.latest"]


def parse_head_key(key: str) -> tuple[str, str, str]:
    """``(agent_id, thread_id, namespace)`` of a head key.

    Raises:
        ContractError: ``key`` is not a head key.
    """
    parts = key.split(".")
    if len(parts) == 3 and parts[2] == "latest":
        return unescape_token(parts[0]), unescape_token(parts[1]), ""
    if len(parts) == 5 and parts[2] == "ns" and parts[4] == "latest":
        return unescape_token(parts[0]), unescape_token(parts[1]), unescape_token(parts[3])
    raise ContractError(f"{key!r} is not a checkpoint head key")


def where(tk: ThreadKeys) -> str:
    """Human-readable name of a thread for messages."""
    ns = f" namespace {tk.namespace!r}" if tk.namespace else ""
    return f"agent {tk.agent_id!r} thread {tk.thread_id!r}{ns}"
