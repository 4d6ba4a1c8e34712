"""Reading a NATS JWT's claims without a JWS library (``agentbus.auth.jwt_claims``)."""

from __future__ import annotations

import base64
import json

import pytest

from agentbus.auth.jwt_claims import decode
from agentbus.errors import ContractError


def _part(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_the_claims_of_a_well_formed_token_are_read_unverified() -> None:
    token = ".".join([_part({"typ": "JWT", "alg": "ed25519-nkey"}), _part({"sub": "U1"}), "sig"])
    assert decode(token) == {"sub": "U1"}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "only.two",
        "a.b.c.d",
        f"{_part({'typ': 'JWT'})}.%%%.sig",
        f"{_part({'typ': 'JWT'})}.{_part([1, 2])}.sig",
        f"{_part('header')}.{_part({'sub': 'U1'})}.sig",
        f"{_part({'typ': 'JWT'})}.{base64.urlsafe_b64encode(b'not json').decode()}.sig",
        f"{_part({'typ': 'JWT'})}.{base64.urlsafe_b64encode(bytes([255, 254])).decode()}.sig",
    ],
)
def test_anything_else_is_a_contract_error(token: str) -> None:
    with pytest.raises(ContractError, match="not a valid NATS JWT"):
        decode(token)
