"""``agentbus tokens create|list|revoke`` against the session nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agentbus.auth.tokens import verify_token
from agentbus.bus import Bus
from agentbus.errors import AuthenticationError
from agentbus.messages import ApiToken
from agentbus.settings import BusSettings
from tests._harness.cli import invoke, on_bus

pytestmark = pytest.mark.nats


def verified(settings: BusSettings, secret: str) -> ApiToken | str:
    async def go(bus: Bus) -> ApiToken | str:
        try:
            return await verify_token(bus, secret)
        except AuthenticationError as exc:
            return exc.reason

    return on_bus(settings, go)


def test_create_list_revoke_round_trip(bus_settings: BusSettings) -> None:
    on_bus(bus_settings, lambda bus: asyncio.sleep(0))  # the bucket exists
    code, out, err = invoke(
        bus_settings, "tokens", "create", "ci-bot", "--scope", "tasks:submit", "-s", "tasks:read",
        "--expires-s", "3600", "--json",
    )  # fmt: skip
    assert code == 0, err
    created = msgspec.json.decode(out)
    secret, shown = created["secret"], created["token"]
    token_id = shown["token_id"]
    assert secret.startswith(f"abt_{token_id}_")
    assert shown["scopes"] == ["tasks:submit", "tasks:read"]
    assert shown["state"] == "active"
    assert shown["expires_at"] is not None
    assert "secret_sha256" not in shown
    token = verified(bus_settings, secret)
    assert isinstance(token, ApiToken)
    assert token.name == "ci-bot"

    code, out, err = invoke(bus_settings, "tokens", "create", "script", "-s", "admin", "-q")
    assert code == 0, err
    quiet_secret = out.strip()
    assert quiet_secret.startswith("abt_") and len(out.splitlines()) == 1

    code, out, err = invoke(bus_settings, "tokens", "list", "--json")
    assert code == 0, err
    listed: list[dict[str, Any]] = msgspec.json.decode(out)
    assert [t["name"] for t in listed] == ["ci-bot", "script"]
    assert token.secret_sha256 not in out
    assert secret.split("_", 2)[2] not in out
    code, out, err = invoke(bus_settings, "tokens", "list")
    assert code == 0, err
    assert token_id in out and "tasks:submit, tasks:read" in out and "active" in out

    code, out, err = invoke(bus_settings, "tokens", "revoke", token_id)
    assert code == 0, err
    assert f"token {token_id} revoked" in out
    assert verified(bus_settings, secret) == "revoked"
    assert isinstance(verified(bus_settings, quiet_secret), ApiToken)
    code, out, err = invoke(bus_settings, "tokens", "list", "--json")
    states = {t["token_id"]: t["state"] for t in msgspec.json.decode(out)}
    assert states[token_id] == "revoked"
    code, _, err = invoke(bus_settings, "tokens", "revoke", token_id)  # again: no change
    assert code == 0, err


def test_bad_input_exits_2_and_unknown_ids_1(bus_settings: BusSettings) -> None:
    on_bus(bus_settings, lambda bus: asyncio.sleep(0))
    code, _, err = invoke(bus_settings, "tokens", "create", "x", "--scope", "tasks:everything")
    assert code == 2
    assert "unknown scope" in err
    code, _, err = invoke(bus_settings, "tokens", "create", "bad name!", "--scope", "admin")
    assert code == 2, err
    code, _, err = invoke(bus_settings, "tokens", "revoke", "not-an-id")
    assert code == 2
    assert "12 hex characters" in err
    code, _, err = invoke(bus_settings, "tokens", "revoke", "0" * 12)
    assert code == 1
    assert "no token with id" in err
    code, out, err = invoke(bus_settings, "tokens", "list", "--json")
    assert code == 0, err
    assert msgspec.json.decode(out) == []
