"""Identifier rules: tokens, task ids, replica agent ids, escaped tokens.

Re-exported by ``agentbus.names``; ``docs/protocol.md``, "Conventions".
"""

from __future__ import annotations

import re

from agentbus.errors import ContractError
from agentbus.messages.common import TASK_ID_PATTERN

_TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_BAND_SUFFIX_RE = re.compile(r"-p[1-9]$")


def check_token(kind: str, value: str) -> str:
    """Validate one subject token (capability, node id, agent id, deployment name).

    Tokens are lowercase ``[a-z0-9][a-z0-9_-]*`` (at most 64 characters): no dots,
    wildcards or spaces, so they are safe as a NATS subject token, a KV key part and
    a consumer name part. A capability may not end in ``-p1`` .. ``-p9`` (the suffix
    of priority-band consumers).

    Raises:
        ContractError: the value is not a valid token.
    """
    if kind == "capability" and _BAND_SUFFIX_RE.search(value):
        # Consumer cap-<c>-p<N> is band N of <c>: capability "x-p1" would share the
        # consumer of band 1 of "x" (and a grant for one would cover the other's tasks).
        raise ContractError(
            f"capability {value!r} may not end in -p1 .. -p9: those name the priority "
            "bands of another capability's consumers"
        )
    if not _TOKEN_RE.match(value):
        raise ContractError(
            f"{kind} {value!r} is not a valid token: use 1-64 characters of [a-z0-9_-], "
            "starting with a letter or digit"
        )
    return value


_TASK_ID_RE = re.compile(TASK_ID_PATTERN)


def check_task_id(value: str, kind: str = "task id") -> str:
    """Validate a task id before it becomes a subject token or a KV key.

    Task ids are 1-128 characters of ``[A-Za-z0-9_-]`` (``TaskId`` on the wire).

    Raises:
        ContractError: the value is not a valid task id.
    """
    if not _TASK_ID_RE.match(value):
        shown = value if len(value) <= 80 else f"{value[:80]}... ({len(value)} characters)"
        raise ContractError(f"{kind} {shown!r} is not valid: use 1-128 characters of [A-Za-z0-9_-]")
    return value


def replica_agent_id(deployment: str, replica: int) -> str:
    """The agent id replica ``replica`` of ``deployment`` runs as: ``<deployment>-<replica>``.

    The supervisor gives it to the replica (``AGENTBUS_AGENT_ID``); the logs, the
    registry and ``agentbus ps`` find a replica's agent by it.
    """
    return f"{deployment}-{replica}"


def replica_agent_id_pattern(deployment: str, replica: int | None = None) -> re.Pattern[str]:
    """A pattern whose ``fullmatch`` accepts the agent ids of ``deployment``'s replicas.

    With ``replica``, only that replica's (see ``replica_agent_id``).
    """
    index = str(replica) if replica is not None else r"\d+"
    return re.compile(rf"{re.escape(deployment)}-{index}")


TOKEN_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
"""Bytes ``escape_token`` keeps as they are."""


def escape_token(value: str) -> str:
    """Escape any string into one subject token / KV key part, reversibly.

    UTF-8 bytes in ``[A-Za-z0-9_-]`` stay, every other byte becomes ``=HH`` (upper-case
    hex): ``a.b c`` is ``a=2Eb=20c``. The empty string stays empty.
    """
    return "".join(chr(b) if b in TOKEN_SAFE_BYTES else f"={b:02X}" for b in value.encode())
