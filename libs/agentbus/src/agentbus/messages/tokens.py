"""Gateway API tokens as stored in KV ``<p>_tokens`` (``agentbus.auth.tokens``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agentbus.messages.common import Message

Scope = Literal[
    "tasks:submit",
    "tasks:read",
    "tasks:cancel",
    "events:publish",
    "events:read",
    "fleet:read",
    "fleet:admin",
    "approvals:decide",
    "metrics:read",
    "admin",
]
"""What a token may do at the gateway; ``admin`` implies every other scope.

``docs/protocol.md`` ("Gateway tokens") maps each HTTP route to its scope.
"""

TOKEN_ID_PATTERN = r"^[0-9a-f]{12}$"
TokenId = Annotated[str, msgspec.Meta(pattern=TOKEN_ID_PATTERN)]
"""A token id: 12 lowercase hex characters (6 random bytes)."""
TokenName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A token's label: 1-64 characters of ``[A-Za-z0-9_.-]``, starting alphanumeric."""


class ApiToken(Message, frozen=True, kw_only=True):
    """A gateway bearer token, key = ``token_id`` in KV ``<p>_tokens``.

    The token a caller presents is ``abt_<token_id>_<secret>``; only the SHA-256 of
    the secret is stored. A revoked token stays listed (``revoked_at`` set).
    """

    token_id: TokenId
    name: TokenName
    scopes: list[Scope]
    secret_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    """Hex SHA-256 of the secret's UTF-8 text."""
    created_at: datetime
    expires_at: datetime | None = None
    """After this time the token is refused; None: it does not expire."""
    revoked_at: datetime | None = None
    """When it was revoked; None: not revoked."""


MESSAGES: tuple[type[Message], ...] = (ApiToken,)
