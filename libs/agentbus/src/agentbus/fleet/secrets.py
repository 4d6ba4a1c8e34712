"""Deployment secrets: the fleet's secrets key pair, sealing env values, opening them.

A fleet has one X25519 key pair for secrets. The supervisors hold the private key (a
file of 0600 mode: the standard base64 of its 32 bytes and a newline) and publish
the public key in KV ``<p>_secrets_keys`` (``SecretsPublicKey``). ``agentbus apply``
seals every secret env value to that public key with a libsodium sealed box
(``nacl.public.SealedBox``: an ephemeral X25519 key, XSalsa20-Poly1305), so the
deployment stored on the bus carries only ``SealedSecret``s; a supervisor opens them
right before it starts a replica. Keys are named by ``key_id``: the first 16 hex
digits of the SHA-256 of the public key. ``docs/operations.md`` ("Deployment secrets")
covers key files, sharing and rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import nacl.exceptions
from nacl.public import PrivateKey, PublicKey, SealedBox

from agentbus.errors import SecretCorruptedError, SecretError, SecretKeyMismatchError
from agentbus.messages import Deployment, SealedSecret, SecretsPublicKey, utcnow
from agentbus.names import Names

__all__ = [
    "PUBLIC_KEY_ENTRY",
    "SecretsKeyring",
    "generate_secrets_key",
    "key_id",
    "load_secrets_key",
    "open_sealed",
    "public_key_entry",
    "public_key_of",
    "seal",
    "seal_env",
]
PUBLIC_KEY_ENTRY = Names.SECRETS_PUBLIC_KEY_ENTRY
"""Key of the published ``SecretsPublicKey`` in KV ``<p>_secrets_keys``."""
KEY_FILE_MODE = 0o600


def key_id(public_key: PublicKey) -> str:
    """The id of ``public_key``: first 16 hex digits of the SHA-256 of its 32 bytes."""
    return hashlib.sha256(bytes(public_key)).hexdigest()[:16]


def generate_secrets_key(path: str | Path) -> PublicKey:
    """Make a new secrets private key, write it to ``path`` (mode 0600), return its public key.

    Missing parent directories are made (mode 0700). An existing file is never
    overwritten: a fleet's key must not change by accident (rotation,
    ``docs/operations.md``, keeps the old key readable meanwhile).

    Raises:
        SecretError: ``path`` exists or cannot be written.
    """
    path = Path(path)
    private_key = PrivateKey.generate()
    text = base64.b64encode(bytes(private_key)) + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        raise SecretError(f"secrets key file {str(path)!r} exists; not overwritten") from None
    except OSError as exc:
        raise SecretError(f"cannot write secrets key file {str(path)!r}: {exc}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    return private_key.public_key


def load_secrets_key(path: str | Path) -> PrivateKey:
    """The secrets private key in the file at ``path`` (base64 of 32 bytes).

    Raises:
        SecretError: the file cannot be read or does not hold a key.
    """
    try:
        text = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read secrets key file {str(path)!r}: {exc}") from exc
    try:
        raw = base64.b64decode(text, validate=True)
        return PrivateKey(raw)
    except (binascii.Error, ValueError, TypeError, nacl.exceptions.CryptoError):
        raise SecretError(
            f"secrets key file {str(path)!r} does not hold a key (base64 of 32 bytes)"
        ) from None


def seal(public_key: PublicKey, plaintext: str) -> SealedSecret:
    """``plaintext`` (UTF-8) sealed to ``public_key``; only its private key opens it."""
    ciphertext = SealedBox(public_key).encrypt(plaintext.encode())
    return SealedSecret(
        ciphertext_b64=base64.b64encode(ciphertext).decode(), key_id=key_id(public_key)
    )


def open_sealed(private_key: PrivateKey, sealed: SealedSecret, *, name: str = "") -> str:
    """The plaintext of ``sealed``; ``name`` (the env name) is for error messages.

    Raises:
        SecretKeyMismatchError: ``sealed`` names another key than ``private_key``'s.
        SecretCorruptedError: the ciphertext is not base64, or fails to authenticate.
    """
    held = key_id(private_key.public_key)
    if sealed.key_id != held:
        raise SecretKeyMismatchError(name, sealed.key_id, [held])
    try:
        ciphertext = base64.b64decode(sealed.ciphertext_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SecretCorruptedError(name, sealed.key_id, "not base64") from None
    try:
        plaintext = SealedBox(private_key).decrypt(ciphertext)
    except nacl.exceptions.CryptoError:
        raise SecretCorruptedError(name, sealed.key_id, "authentication failed") from None
    try:
        return plaintext.decode()
    except UnicodeDecodeError:
        raise SecretCorruptedError(name, sealed.key_id, "not UTF-8") from None


class SecretsKeyring:
    """The private keys a supervisor holds: the current one and retired ones.

    Secrets sealed to any held key open; ``current`` is the key it publishes.
    Retired keys keep replicas sealed to an old key running during a rotation.
    """

    def __init__(self, current: PrivateKey, retired: Iterable[PrivateKey] = ()) -> None:
        self.current = current
        self.keys = {key_id(k.public_key): k for k in (*retired, current)}

    @property
    def key_id(self) -> str:
        """The id of the current key."""
        return key_id(self.current.public_key)

    def open(self, name: str, sealed: SealedSecret) -> str:
        """The plaintext of secret ``name``.

        Raises:
            SecretKeyMismatchError: no held key has ``sealed.key_id``.
            SecretCorruptedError: it does not open with the key of that id.
        """
        private_key = self.keys.get(sealed.key_id)
        if private_key is None:
            raise SecretKeyMismatchError(name, sealed.key_id, self.keys)
        return open_sealed(private_key, sealed, name=name)

    def open_env(self, deployment: Deployment) -> dict[str, str]:
        """Every ``secret_env`` value of ``deployment`` opened, by env name.

        Raises:
            SecretKeyMismatchError: a value is sealed to a key not held.
            SecretCorruptedError: a value does not open.
        """
        return {name: self.open(name, s) for name, s in sorted(deployment.secret_env.items())}


def public_key_entry(public_key: PublicKey, *, node_id: str = "") -> SecretsPublicKey:
    """The ``SecretsPublicKey`` a supervisor publishes for ``public_key``."""
    return SecretsPublicKey(
        key_id=key_id(public_key),
        public_key_b64=base64.b64encode(bytes(public_key)).decode(),
        node_id=node_id,
        published_at=utcnow(),
    )


def public_key_of(entry: SecretsPublicKey) -> PublicKey:
    """The public key of a published entry, checked against its ``key_id``.

    Raises:
        SecretError: not base64 of 32 bytes, or its id differs from ``key_id``.
    """
    try:
        public_key = PublicKey(base64.b64decode(entry.public_key_b64, validate=True))
    except (binascii.Error, ValueError, TypeError, nacl.exceptions.CryptoError):
        raise SecretError(f"published secrets key {entry.key_id} is not a public key") from None
    if key_id(public_key) != entry.key_id:
        raise SecretError(f"published secrets key does not match its id {entry.key_id}")
    return public_key


def seal_env(plaintexts: Mapping[str, str], public_key: PublicKey) -> dict[str, SealedSecret]:
    """Each value of ``plaintexts`` sealed to ``public_key``, by env name."""
    return {name: seal(public_key, value) for name, value in sorted(plaintexts.items())}
