"""Credentials end: an expired or revoked user is refused, its connection closed."""

from __future__ import annotations

import time

import pytest

from agentbus.auth import nats_jwt
from agentbus.auth.agent_grants import AgentGrant, agent_permissions
from agentbus.auth.authority import Authority
from agentbus.auth.creds import creds_jwt
from agentbus.auth.revocation import Revoker
from agentbus.bus import Bus
from agentbus.errors import AuthenticationError
from agentbus.names import Names
from tests._harness.auth import AuthServer
from tests._harness.polling import eventually

pytestmark = pytest.mark.timeout(60)


async def test_revoked_user_is_disconnected_and_refused(secured: AuthServer, prefix: str) -> None:
    grant = AgentGrant(agent_id="gone-0", capabilities=("echo",))
    settings = secured.mint(prefix, "agent-gone-0", agent_permissions(Names(prefix), grant))
    assert settings.creds_file is not None
    kept = await Bus.connect(secured.agent(prefix, AgentGrant(agent_id="kept-0", capabilities=())))
    bus = await Bus.connect(settings)
    creds = settings.creds_file.read_text()
    user = next(line for line in creds.splitlines() if line.startswith("SU"))
    public_key = Authority(secured.auth).authority_public_key_of(user)
    revoker = Revoker.for_dir(secured.auth, settings)
    assert revoker is not None
    await revoker.revoke({public_key: time.time() + 600})
    await eventually(
        lambda: bus.nc.is_closed or not bus.nc.is_connected,
        timeout_s=10,
        what="revoked user disconnected",
    )
    with pytest.raises(AuthenticationError):
        await Bus.connect(settings)
    assert kept.nc.is_connected  # another user of the account is untouched
    await kept.close()
    await bus.close()


async def test_expired_user_is_refused(secured: AuthServer, prefix: str) -> None:
    grant = AgentGrant(agent_id="brief-0", capabilities=())
    settings = secured.agent(prefix, grant, ttl_s=2.0)
    assert settings.creds_file is not None
    expires_at = nats_jwt.decode(creds_jwt(settings.creds_file))["exp"]
    bus = await Bus.connect(settings)
    # nats-server compares whole seconds (now > exp): a connect within the second
    # after ``exp`` is still accepted.
    await eventually(
        lambda: time.time() > expires_at + 1.5 and not bus.nc.is_connected,
        timeout_s=10,
        what="expired user disconnected",
    )
    with pytest.raises(AuthenticationError):
        await Bus.connect(settings)
    await bus.close()
