"""Bearer tokens of the HTTP gateway, stored hashed in KV ``<p>_tokens``.

A token as a caller presents it is ``abt_<token_id>_<secret>``: ``token_id`` is 12 hex
characters (6 random bytes, the KV key, safe to log), ``secret`` 32 random bytes from
``secrets`` in URL-safe base64 (43 characters). The bucket holds an ``ApiToken`` with
the SHA-256 of the secret, never the secret itself, which is shown once at creation.

A plain SHA-256 is the right hash here: the secret has 256 bits of entropy, so there
is nothing for a slow KDF (bcrypt, scrypt, Argon2) to protect against brute force,
and a fast hash keeps a request's check in microseconds. Digests are compared with
``hmac.compare_digest`` (constant time).

``admin`` implies every scope. A revoke keeps the entry (``revoked_at``), so
``list_tokens`` still shows it; an expired token is refused but kept too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import get_args

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from agentbus.bus import Bus
from agentbus.errors import (
    AuthenticationError,
    ContractError,
    NotFoundError,
    PermissionDeniedError,
)
from agentbus.kv.replay import replay
from agentbus.messages import ApiToken, Scope, encode, utcnow

TOKEN_PREFIX = "abt_"
"""What every token starts with (so a leaked one is recognisable by secret scanners)."""
SCOPES: tuple[Scope, ...] = get_args(Scope)
"""Every scope, ``admin`` last."""
_SECRET_BYTES = 32
_ID_BYTES = 6
_decode = msgspec.json.Decoder(ApiToken).decode


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of ``secret``'s UTF-8 text (what ``ApiToken.secret_sha256`` holds)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(presented: str) -> tuple[str, str]:
    """``(token_id, secret)`` of a presented ``abt_<token_id>_<secret>``.

    Raises:
        AuthenticationError: not of that form (reason ``malformed``); the message
            does not repeat the value.
    """
    body = presented.removeprefix(TOKEN_PREFIX)
    token_id, _, secret = body.partition("_")
    if (
        body == presented
        or len(token_id) != 2 * _ID_BYTES
        or not all(c in "0123456789abcdef" for c in token_id)
        or not secret
    ):
        raise AuthenticationError("malformed", "the bearer token is not an agentbus token")
    return token_id, secret


def has_scope(token: ApiToken, scope: Scope) -> bool:
    """Whether ``token`` grants ``scope`` (``admin`` grants all)."""
    return scope in token.scopes or "admin" in token.scopes


def require_scope(token: ApiToken, scope: Scope) -> None:
    """Check that ``token`` grants ``scope``.

    Raises:
        PermissionDeniedError: it does not.
    """
    if not has_scope(token, scope):
        raise PermissionDeniedError(
            scope, f"token {token.token_id} lacks the scope {scope!r} this request needs"
        )


def check_token(token: ApiToken | None, token_id: str, secret: str, *, now: datetime) -> ApiToken:
    """``token`` (the stored entry of ``token_id``, None if absent) if ``secret`` opens it.

    Raises:
        AuthenticationError: absent or the secret does not match (``unknown``: the two
            are not told apart), revoked (``revoked``), or past ``expires_at``
            (``expired``).
    """
    if token is None or not hmac.compare_digest(token.secret_sha256, hash_secret(secret)):
        raise AuthenticationError("unknown", f"no valid token with id {token_id}")
    if token.revoked_at is not None:
        raise AuthenticationError("revoked", f"token {token_id} was revoked")
    if token.expires_at is not None and now >= token.expires_at:
        raise AuthenticationError("expired", f"token {token_id} expired")
    return token


async def _kv(bus: Bus) -> KeyValue:
    return await bus.kv(bus.names.tokens_bucket)


async def get_token(kv: KeyValue, token_id: str) -> ApiToken | None:
    """The stored ``ApiToken`` of ``token_id``; None if absent or deleted.

    Raises:
        ContractError: the entry does not decode as an ``ApiToken``.
    """
    try:
        entry = await kv.get(token_id)
    except nats.js.errors.KeyNotFoundError:  # also a deleted or purged key
        return None
    try:
        return _decode(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"token entry {token_id!r} is not an ApiToken: {exc}") from exc


async def create_token(
    bus: Bus, name: str, scopes: Iterable[str], *, expires_s: float | None = None
) -> tuple[ApiToken, str]:
    """Make a token named ``name`` granting ``scopes``; returns it and its full text.

    The text (``abt_<id>_<secret>``) exists only in the return value: keep it.

    Raises:
        ContractError: an unknown scope, no scope, a bad name or ``expires_s`` <= 0.
    """
    wanted = list(dict.fromkeys(scopes))
    if unknown := [s for s in wanted if s not in SCOPES]:
        raise ContractError(f"unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
    if not wanted:
        raise ContractError("a token needs at least one scope")
    if expires_s is not None and expires_s <= 0:
        raise ContractError(f"expires_s must be > 0, got {expires_s}")
    kv = await _kv(bus)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    now = utcnow()
    fields = {
        "name": name,
        "scopes": wanted,
        "secret_sha256": hash_secret(secret),
        "created_at": now,
        "expires_at": now + timedelta(seconds=expires_s) if expires_s is not None else None,
    }
    while True:  # a clash of 48-bit ids is unlikely; create() refuses to overwrite
        token_id = secrets.token_hex(_ID_BYTES)
        try:
            token = msgspec.convert({**fields, "token_id": token_id}, ApiToken)
        except msgspec.ValidationError as exc:
            raise ContractError(f"token: {exc}") from exc
        try:
            await kv.create(token_id, encode(token))
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return token, f"{TOKEN_PREFIX}{token_id}_{secret}"


async def list_tokens(bus: Bus) -> list[ApiToken]:
    """Every stored token (revoked and expired ones too), by creation time.

    Raises:
        ContractError: an entry does not decode as an ``ApiToken``.
    """

    def bad(token_id: str) -> None:
        raise ContractError(f"token entry {token_id!r} is not an ApiToken")

    found = (await replay(await _kv(bus), ApiToken, on_bad=bad)).values()
    return sorted(found, key=lambda t: (t.created_at, t.token_id))


async def revoke_token(bus: Bus, token_id: str) -> ApiToken:
    """Revoke ``token_id``; the gateway refuses it within about a second.

    Revoking a revoked token changes nothing (the first ``revoked_at`` stays).

    Raises:
        NotFoundError: no such token.
    """
    kv = await _kv(bus)
    while True:
        try:
            entry = await kv.get(token_id)
        except nats.js.errors.KeyNotFoundError:
            raise NotFoundError(f"no token with id {token_id!r}") from None
        token = _decode(entry.value or b"")
        if token.revoked_at is not None:
            return token
        revoked = msgspec.structs.replace(token, revoked_at=utcnow())
        try:
            await kv.update(token_id, encode(revoked), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # written meanwhile: look again
        return revoked


async def verify_token(source: Bus | KeyValue, presented: str) -> ApiToken:
    """The stored token ``presented`` (``abt_<id>_<secret>``) stands for, if valid now.

    Reads the bucket each call; the gateway keeps a watched copy instead.

    Raises:
        AuthenticationError: malformed, unknown, wrong secret, revoked or expired.
    """
    token_id, secret = parse_token(presented)
    kv = await _kv(source) if isinstance(source, Bus) else source
    try:
        stored = await get_token(kv, token_id)
    except ContractError:
        stored = None
    return check_token(stored, token_id, secret, now=utcnow())
