"""Deployment secrets on the wire: sealed values and the fleet's secrets public key.

A secret env value travels and is stored only as a libsodium sealed box
(X25519 + XSalsa20-Poly1305, ``agentbus.fleet.secrets``) that the supervisors' private
key alone opens. ``docs/decisions/0005-deployment-secrets.md`` gives the reasons.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from agentbus.messages.common import Message

KeyId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
"""First 16 hex digits of the SHA-256 of a 32-byte X25519 public key."""


class SealedSecret(Message, frozen=True, kw_only=True):
    """One secret env value, sealed to the fleet's secrets public key ``key_id``.

    ``ciphertext_b64`` is the standard base64 of a libsodium sealed box (48 bytes of
    overhead plus the UTF-8 value); sealing is randomized, so sealing one value twice
    gives two ciphertexts. Only a supervisor holding the private key of ``key_id``
    opens it, right before it starts a replica.
    """

    ciphertext_b64: str
    key_id: KeyId


class SecretsPublicKey(Message, frozen=True, kw_only=True):
    """KV ``<p>_secrets_keys`` entry ``public``: the key ``apply`` seals secrets to.

    ``public_key_b64`` is the standard base64 of the 32-byte X25519 public key,
    ``key_id`` its id; ``node_id`` names the supervisor that published it.
    """

    key_id: KeyId
    public_key_b64: str
    node_id: str = ""
    published_at: datetime | None = None


MESSAGES: tuple[type[Message], ...] = (SealedSecret, SecretsPublicKey)
