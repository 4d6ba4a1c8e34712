"""Reading the claims of a NATS JWT, unverified, without a JWS library.

A process that only connects with a creds file (an agent) needs the claims of its own
user JWT (``agentbus.auth.creds.creds_inbox_prefix``), not PyJWT and ``cryptography``,
which signing and verifying (``agentbus.auth.nats_jwt``) load.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from agentbus.errors import ContractError


def decode(token: str) -> dict[str, Any]:
    """The claims of a NATS JWT, unverified (nats-server verifies the chain on connect).

    For reading this project's own JWTs back, never to trust a JWT from elsewhere.

    Raises:
        ContractError: not a JWT (not three dot-separated base64url parts whose first
            two are JSON objects).
    """
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError(f"{len(parts)} parts, not 3")
        header, claims = (json.loads(_b64(part)) for part in parts[:2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("header or claims not a JSON object")
    except (ValueError, binascii.Error) as exc:
        raise ContractError(f"not a valid NATS JWT: {exc}") from exc
    return claims


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
