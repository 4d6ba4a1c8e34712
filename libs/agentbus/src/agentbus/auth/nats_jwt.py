"""NATS JWTs: encode and decode operator, account and user claims signed with nkeys.

The format is nats-io/jwt v2 (``docs.nats.io``, "JWTs"): a JWS with header
``{"typ": "JWT", "alg": "ed25519-nkey"}``, claims ``jti``/``iat``/``iss``/``sub``/
``name``/``exp`` and a ``nats`` member holding the claim type's fields. The JWS framing
is PyJWT's; the ed25519 signature is the issuer nkey's (nats-io's ``nkeys`` package).
``jti`` is the base32 (no padding) SHA-256 of the claims with an empty ``jti``, as the
Go library computes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import jwt
import nkeys
from jwt.algorithms import Algorithm

from agentbus.auth.jwt_claims import decode as decode  # re-exported
from agentbus.errors import ContractError

ALGORITHM = "ed25519-nkey"
"""The JWS ``alg`` of every NATS JWT."""

_PREFIX_BYTES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


class _NkeyAlgorithm(Algorithm):
    """PyJWT algorithm ``ed25519-nkey``: the key is an ``nkeys.KeyPair``."""

    def prepare_key(self, key: Any) -> Any:
        return key

    def sign(self, msg: bytes, key: Any) -> bytes:
        return bytes(key.sign(msg))

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:  # pragma: no cover - unused
        raise NotImplementedError

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:  # pragma: no cover - unused
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> Any:  # pragma: no cover - unused
        raise NotImplementedError


_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm(ALGORITHM, _NkeyAlgorithm())


def new_keypair(kind: str) -> nkeys.KeyPair:
    """A fresh nkey pair of ``kind`` (``operator``, ``account`` or ``user``).

    Raises:
        ContractError: unknown kind.
    """
    if kind not in _PREFIX_BYTES:
        raise ContractError(f"unknown nkey kind {kind!r}")
    seed = nkeys.encode_seed(secrets.token_bytes(32), _PREFIX_BYTES[kind])
    return nkeys.from_seed(bytearray(seed))


def keypair_from_seed(seed: bytes | str) -> nkeys.KeyPair:
    """The key pair of an nkey seed (``SO...``, ``SA...``, ``SU...``).

    Raises:
        ContractError: the seed is not a valid nkey seed.
    """
    raw = seed.encode() if isinstance(seed, str) else seed
    try:
        return nkeys.from_seed(bytearray(raw.strip()))
    except (nkeys.NkeysError, ValueError) as exc:
        raise ContractError(f"not a valid nkey seed: {exc}") from exc


def public_key(kp: nkeys.KeyPair) -> str:
    """The public key (``O...``, ``A...``, ``U...``) of a key pair, as text."""
    return bytes(kp.public_key).decode()


def seed(kp: nkeys.KeyPair) -> str:
    """The seed of a key pair, as text. Secret."""
    return bytes(kp.seed).decode()


def encode(
    claim_type: str,
    *,
    subject: str,
    name: str,
    issuer: nkeys.KeyPair,
    nats: dict[str, Any],
    expires_at_s: float | None = None,
    issued_at_s: float | None = None,
) -> str:
    """Sign a NATS JWT of ``claim_type`` (``operator``, ``account``, ``user``).

    Args:
        claim_type: ``operator``, ``account`` or ``user``.
        subject: the public key the claims are about.
        name: a human-readable name.
        issuer: the signing key pair (its public key becomes ``iss``).
        nats: the claim type's fields (``type`` and ``version`` are added).
        expires_at_s: Unix time the JWT stops being valid (``exp``); None: never.
        issued_at_s: Unix time of issue (``iat``); now by default.
    """
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(issued_at_s if issued_at_s is not None else time.time()),
        "iss": public_key(issuer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "type": claim_type, "version": 2},
    }
    if expires_at_s is not None:
        claims["exp"] = int(expires_at_s)
    digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return _JWS.encode(payload, issuer, algorithm=ALGORITHM, headers={"typ": "JWT"})
