"""``agentbus.auth.tokens`` against the session nats-server: format, hash, checks."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import msgspec
import pytest

from agentbus.auth.tokens import (
    TOKEN_PREFIX,
    check_token,
    create_token,
    has_scope,
    list_tokens,
    parse_token,
    require_scope,
    revoke_token,
    verify_token,
)
from agentbus.bus import Bus
from agentbus.errors import (
    AuthenticationError,
    ContractError,
    NotFoundError,
    PermissionDeniedError,
)
from agentbus.messages import ApiToken, utcnow

pytestmark = pytest.mark.nats


async def test_a_token_is_stored_hashed_and_verifies(bus: Bus) -> None:
    token, text = await create_token(bus, "svc", ["tasks:read"])
    token_id, secret = parse_token(text)
    assert text == f"{TOKEN_PREFIX}{token_id}_{secret}"
    assert token_id == token.token_id
    assert len(secret) == 43  # 32 bytes, URL-safe base64 without padding
    kv = await bus.kv(bus.names.tokens_bucket)
    stored = (await kv.get(token_id)).value or b""
    assert secret.encode() not in stored
    assert msgspec.json.decode(stored, type=ApiToken).secret_sha256 == (
        hashlib.sha256(secret.encode()).hexdigest()
    )
    assert await verify_token(bus, text) == token
    assert await verify_token(kv, text) == token
    assert [t.token_id for t in await list_tokens(bus)] == [token_id]


async def test_wrong_revoked_and_expired_tokens_are_refused(bus: Bus) -> None:
    token, text = await create_token(bus, "svc", ["tasks:read"])
    with pytest.raises(AuthenticationError) as wrong:
        await verify_token(bus, text[:-1] + ("A" if text[-1] != "A" else "B"))
    assert wrong.value.reason == "unknown"
    revoked = await revoke_token(bus, token.token_id)
    assert revoked.revoked_at is not None
    assert (await revoke_token(bus, token.token_id)).revoked_at == revoked.revoked_at
    with pytest.raises(AuthenticationError) as refused:
        await verify_token(bus, text)
    assert refused.value.reason == "revoked"
    with pytest.raises(NotFoundError):
        await revoke_token(bus, "0" * 12)
    later, later_text = await create_token(bus, "short", ["admin"], expires_s=60)
    _, secret = parse_token(later_text)
    assert later.expires_at is not None
    after = later.expires_at + timedelta(seconds=1)
    with pytest.raises(AuthenticationError) as expired:
        check_token(later, later.token_id, secret, now=after)
    assert expired.value.reason == "expired"
    assert check_token(later, later.token_id, secret, now=utcnow()) == later


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "abt_",
        "abt_123_secret",
        "xyz_0123456789ab_secret",
        "abt_0123456789AB_s",
        "abt_0123456789ab_",
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(presented: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        parse_token(presented)
    assert caught.value.reason == "malformed"
    assert presented not in str(caught.value) or not presented


async def test_bad_scopes_names_and_expiry_are_contract_errors(bus: Bus) -> None:
    for name, scopes, expires_s in [
        ("svc", ["tasks:everything"], None),
        ("svc", [], None),
        ("bad name!", ["admin"], None),
        ("svc", ["admin"], 0.0),
    ]:
        with pytest.raises(ContractError):
            await create_token(bus, name, scopes, expires_s=expires_s)
    assert await list_tokens(bus) == []


async def test_admin_implies_every_scope(bus: Bus) -> None:
    admin, _ = await create_token(bus, "root", ["admin"])
    reader, _ = await create_token(bus, "reader", ["tasks:read"])
    assert has_scope(admin, "fleet:admin") and has_scope(reader, "tasks:read")
    assert not has_scope(reader, "tasks:submit")
    with pytest.raises(PermissionDeniedError) as denied:
        require_scope(reader, "tasks:submit")
    assert denied.value.scope == "tasks:submit"
