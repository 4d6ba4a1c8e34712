"""What an auth directory holds, without its secrets (``agentbus auth show``)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from agentbus.auth import nats_jwt
from agentbus.auth.authority import AuthDir
from agentbus.auth.creds import creds_jwt
from agentbus.errors import ContractError


@dataclass(frozen=True, slots=True)
class Identity:
    """One creds file of the directory.

    Attributes:
        name: the user's name (``registry``, ``supervisor-<node>``, ``operator``...).
        file: the creds file, relative to the directory.
        public_key: the user's public key (``U...``).
        account: the account it belongs to (``A...``): the fleet's, or the system's.
        expires_at_s: Unix time its JWT expires; None: never.
    """

    name: str
    file: str
    public_key: str
    account: str
    expires_at_s: float | None


@dataclass(frozen=True, slots=True)
class AuthSummary:
    """Public keys and identities of an auth directory.

    Attributes:
        path: the directory.
        operator: the operator's public key (``O...``).
        system_account: the system account's public key.
        account: the fleet account's public key.
        signing_key: the fleet account's signing key (public half).
        identities: one per readable creds file, by file name.
        unreadable: creds files that hold no user JWT, with the reason.
    """

    path: str
    operator: str
    system_account: str
    account: str
    signing_key: str
    identities: tuple[Identity, ...]
    unreadable: dict[str, str]

    def to_json(self) -> bytes:
        """The summary as JSON (no seed: none is ever read into it)."""
        return msgspec.json.encode(self)


def summarize(auth: AuthDir) -> AuthSummary:
    """Read the JWTs of ``auth`` and the JWT half of each creds file.

    Raises:
        ContractError: a JWT of the directory is missing (not initialised).
    """
    account_claims = auth.claims("account.jwt")
    signing = account_claims.get("nats", {}).get("signing_keys") or [""]
    identities: list[Identity] = []
    unreadable: dict[str, str] = {}
    for path in sorted((auth.path / "creds").glob("*.creds")):
        rel = str(path.relative_to(auth.path))
        try:
            claims = nats_jwt.decode(creds_jwt(path))
        except (ContractError, ValueError) as exc:
            unreadable[rel] = str(exc)
            continue
        nats = claims.get("nats", {})
        exp = claims.get("exp")
        identities.append(
            Identity(
                name=str(claims.get("name", "")),
                file=rel,
                public_key=str(claims["sub"]),
                account=str(nats.get("issuer_account") or claims.get("iss", "")),
                expires_at_s=float(exp) if exp is not None else None,
            )
        )
    return AuthSummary(
        path=str(auth.path),
        operator=str(auth.claims("operator.jwt")["sub"]),
        system_account=str(auth.claims("sys.jwt")["sub"]),
        account=str(account_claims["sub"]),
        signing_key=str(signing[0]),
        identities=tuple(identities),
        unreadable=unreadable,
    )
