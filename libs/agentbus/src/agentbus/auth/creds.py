"""Reading a ``.creds`` file: its JWT, and the reply prefix its permissions name."""

from __future__ import annotations

import re
from pathlib import Path

from agentbus.auth import nats_jwt
from agentbus.errors import ContractError

_JWT_RE = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------")


def creds_jwt(path: Path) -> str:
    """The user JWT in creds file ``path``.

    Raises:
        ContractError: the file is missing or holds no user JWT.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ContractError(f"cannot read credentials {path}: {exc.strerror}") from exc
    if (m := _JWT_RE.search(text)) is None:
        raise ContractError(f"{path} is not a NATS creds file (no user JWT)")
    return m.group(1)


def creds_inbox_prefix(path: Path) -> str | None:
    """The reply prefix the user of ``path`` may subscribe to (``_INBOX_<kind>_<name>``).

    Identities minted by ``agentbus.auth`` may receive replies only under their own
    prefix, so the client must use it (``connect(inbox_prefix=)``). None: the user may
    subscribe to ``_INBOX.>`` (nats-py's default) or anything (``>``).

    Raises:
        ContractError: unreadable creds.
    """
    claims = nats_jwt.decode(creds_jwt(path))
    allowed = claims.get("nats", {}).get("sub", {}).get("allow") or []
    for subject in allowed:
        if subject.startswith("_INBOX_") and subject.endswith(".>"):
            return str(subject[:-2])
    return None
