"""``.creds`` files: minted credentials, writing, reading and checking them.

Writing (``write_secret``), their JWT and reply prefix (``creds_jwt``,
``creds_inbox_prefix``), and whether one grants what this version would
(``creds_outdated``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentbus.auth import jwt_claims
from agentbus.auth.permissions import Permissions
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
    claims = jwt_claims.decode(creds_jwt(path))
    allowed = claims.get("nats", {}).get("sub", {}).get("allow") or []
    for subject in allowed:
        if subject.startswith("_INBOX_") and subject.endswith(".>"):
            return str(subject[:-2])
    return None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A minted NATS user.

    Attributes:
        name: the user's name (shown in the server's connection list).
        jwt: the user JWT.
        seed: the user's nkey seed (secret).
        public_key: the user's public key (``U...``): what ``revoke`` takes.
        expires_at_s: Unix time the JWT expires; None: never.
    """

    name: str
    jwt: str
    seed: str
    public_key: str
    expires_at_s: float | None

    def creds_text(self) -> str:
        """The ``.creds`` file nats clients read (``connect(user_credentials=path)``)."""
        return (
            "-----BEGIN NATS USER JWT-----\n"
            f"{self.jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.seed}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n"
        )


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def creds_outdated(path: Path, permissions: Permissions, prefix: str | None) -> bool:
    """Whether creds file ``path`` must be minted anew to grant ``permissions``.

    Yes when it is missing or holds no user JWT; no when this process may not read it
    (it belongs to another user), or when ``prefix`` is given and its grants name no
    subject of that fleet (issued for another prefix); else whether its
    ``pub``/``sub``/``resp`` claims differ from ``permissions``.
    """
    if not path.exists():
        return True
    try:
        claims: dict[str, Any] = jwt_claims.decode(creds_jwt(path)).get("nats", {})
    except ContractError:
        return os.access(path, os.R_OK)  # unreadable: not ours to replace
    if prefix is not None:
        granted = [*claims.get("pub", {}).get("allow", []), *claims.get("sub", {}).get("allow", [])]
        if not any(subject.startswith(f"{prefix}.") for subject in granted):
            return False
    wanted = permissions.claims()
    return any(claims.get(key) != wanted.get(key) for key in ("pub", "sub", "resp"))
