"""The supervisor's secrets key: load it, publish its public half, open replica secrets.

The private key comes from ``secrets_key_file`` (shared by every node of a fleet);
unset, the supervisor makes one (``settings.secrets_key_file_for``, mode 0600), which
suits a single host only. ``secrets_retired_key_files`` keep secrets sealed to an
earlier key readable during a rotation. At start the supervisor publishes its public
key in KV ``<p>_secrets_keys`` (key ``public``) when none is published or the
published one is a key it has retired (or, with a generated key, one this node
published earlier). A published key it does not hold is left as is, logged and
counted (``agentbus_supervisor_secrets_key_mismatch``): that node cannot open secrets
sealed to it, and its replicas with such secrets fail to start.
"""

from __future__ import annotations

import os

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.errors import (
    AgentBusError,
    SecretCorruptedError,
    SecretError,
    SecretKeyMismatchError,
)
from agentbus.fleet.secrets import (
    PUBLIC_KEY_ENTRY,
    SecretsKeyring,
    generate_secrets_key,
    key_id,
    load_secrets_key,
    public_key_entry,
)
from agentbus.messages import Deployment, SecretsPublicKey, encode
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.settings import SupervisorSettings, secrets_key_file_for

SecretsFailure = tuple[str, str]
"""Why a replica's secrets did not open: (cause, message); cause is ``key-mismatch``
or ``corrupted``. The message names the env variable and key ids, never a value."""


def load_keyring(settings: SupervisorSettings) -> SecretsKeyring:
    """The keys of ``settings``, generating the key file if none is set and none exists.

    Raises:
        SecretError: a key file cannot be read, holds no key, or (a generated one) is
            not owned by this user or is open to others.
    """
    path = secrets_key_file_for(settings)
    if settings.secrets_key_file is None:
        try:
            public_key = generate_secrets_key(path)
            logger.warning(
                "no SUPERVISOR_SECRETS_KEY_FILE: made a secrets key for this host only",
                path=str(path),
                key_id=key_id(public_key),
            )
        except SecretError:
            if not path.exists():
                raise
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise SecretError(f"secrets key file {str(path)!r} is not private to this user")
    elif path.stat().st_mode & 0o077:
        logger.warning("secrets key file is readable by others than its owner", path=str(path))
    retired = [load_secrets_key(p) for p in settings.secrets_retired_key_files]
    return SecretsKeyring(load_secrets_key(path), retired)


def open_secrets(
    keyring: SecretsKeyring, deployment: Deployment
) -> tuple[dict[str, str], SecretsFailure | None]:
    """The opened ``secret_env`` of ``deployment``, or ``({}, failure)``."""
    try:
        return keyring.open_env(deployment), None
    except SecretKeyMismatchError as exc:
        return {}, ("key-mismatch", str(exc))
    except (SecretCorruptedError, SecretError) as exc:
        return {}, ("corrupted", str(exc))


async def publish_public_key(
    bus: Bus,
    keyring: SecretsKeyring,
    *,
    node_id: str,
    metrics: SupervisorMetrics,
    generated: bool = False,
) -> None:
    """Publish the current public key unless another key, not retired here, is published.

    With a ``generated`` key (no key file configured) the supervisor also replaces the
    entry it published itself under an earlier key: its key file was lost (a fresh
    tmp or container), and re-applying the fleet then seals to the new key.
    Best effort: a NATS failure is logged, and ``apply`` then reports no key.
    """
    bucket = bus.names.secrets_keys_bucket
    mine = public_key_entry(keyring.current.public_key, node_id=node_id)
    try:
        kv = await bus.kv(bucket)
        for _ in range(3):  # a concurrent publisher may win a compare-and-set
            try:
                entry = await kv.get(PUBLIC_KEY_ENTRY)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                entry = None
            if entry is None or not entry.value:
                try:
                    await kv.create(PUBLIC_KEY_ENTRY, encode(mine))
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                logger.info("secrets public key published", key_id=mine.key_id)
                metrics.secrets_key_mismatch.set(0)
                return
            published = _decode(entry.value)
            if published is not None and published.key_id == mine.key_id:
                metrics.secrets_key_mismatch.set(0)
                return
            own = generated and published is not None and published.node_id == node_id
            if published is None or own or published.key_id in keyring.keys:
                try:
                    await kv.update(PUBLIC_KEY_ENTRY, encode(mine), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                logger.info("secrets public key replaced", key_id=mine.key_id)
                metrics.secrets_key_mismatch.set(0)
                return
            metrics.secrets_key_mismatch.set(1)
            logger.warning(
                "published secrets key is not held by this supervisor: secrets sealed to it "
                "do not open here (give every node the same SUPERVISOR_SECRETS_KEY_FILE)",
                published_key_id=published.key_id,
                published_by=published.node_id,
                key_id=mine.key_id,
            )
            return
    except (nats.errors.Error, TimeoutError, AgentBusError) as exc:
        logger.warning("secrets public key not published", bucket=bucket, error=repr(exc))


def _decode(value: bytes) -> SecretsPublicKey | None:
    try:
        return msgspec.json.decode(value, type=SecretsPublicKey)
    except msgspec.DecodeError:
        return None
