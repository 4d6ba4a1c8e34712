"""String maps of fleet files (``env``, ``node_selector``) and secret env values.

An ``env`` value is a string (numbers become strings), or a mapping that marks it
secret and says where its plaintext is::

    env:
      LOG_LEVEL: info
      API_KEY: {secret: true, value: "s3cr3t"}      # in the file itself
      DB_PASSWORD: {secret_from_env: DB_PASSWORD}   # from apply's own environment
      TLS_KEY: {secret_from_file: ./tls.key}        # a file, relative to the fleet file

A ``secret_from_file`` value loses one trailing newline. Secrets never reach the
``Deployment`` in plaintext: ``agentbus apply`` seals them (``agentbus.fleet.secrets``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_SECRET_FORMS = "{secret: true, value: ...}, {secret_from_env: VAR} or {secret_from_file: path}"


def kind(value: object) -> str:
    """How a YAML value is named in errors: ``a mapping``, ``a string``, ..."""
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def plain_scalar(value: object) -> bool:
    """Whether ``value`` is a string or a number (not a bool)."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def string_map(value: Any) -> dict[str, str]:
    """A mapping (or list of ``KEY=VALUE``) of strings; numbers become strings.

    Raises:
        ValueError: not such a mapping (the message names the key).
    """
    plain, secrets = env_map(value, None)
    if secrets:
        raise ValueError(f"value of {next(iter(secrets))!r} must be a string, got a mapping")
    return plain


def env_map(value: Any, base_dir: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain values, secret plaintexts)`` of an ``env`` mapping, by name.

    ``base_dir`` resolves relative ``secret_from_file`` paths; None refuses secrets.

    Raises:
        ValueError: a bad value, unset variable or unreadable file (names the key).
    """
    if isinstance(value, list):
        pairs = [str(v).partition("=") for v in value]
        if bad := [k for k, sep, _ in pairs if not sep or not k]:
            raise ValueError(f"expected KEY=VALUE items, got {bad[0]!r}")
        return {k: v for k, _, v in pairs}, {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of strings, got {kind(value)}")
    plain: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or v is None:
            raise ValueError(f"value of {k!r} is {v!r}: quote it (YAML reads yes/no/on as bool)")
        if isinstance(v, dict) and base_dir is not None:
            secrets[str(k)] = _secret(str(k), v, base_dir)
        elif not plain_scalar(v):
            raise ValueError(f"value of {k!r} must be a string, got {kind(v)}")
        else:
            plain[str(k)] = str(v)
    return plain, secrets


def _secret(name: str, spec: dict[Any, Any], base_dir: Path) -> str:
    keys = set(map(str, spec))
    if keys == {"secret", "value"}:
        if spec["secret"] is not True:
            raise ValueError(f"{name}: 'secret' must be true (else give a plain string)")
        if not plain_scalar(spec["value"]):
            raise ValueError(f"{name}: 'value' must be a string, got {kind(spec['value'])}")
        return str(spec["value"])
    if keys == {"secret_from_env"}:
        var = str(spec["secret_from_env"])
        if (found := os.environ.get(var)) is None:
            raise ValueError(f"{name}: environment variable {var!r} is not set")
        return found
    if keys == {"secret_from_file"}:
        path = base_dir / str(spec["secret_from_file"])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: cannot read secret file {str(path)!r}: {exc}") from None
        return text.removesuffix("\n").removesuffix("\r")
    raise ValueError(f"{name}: a secret is {_SECRET_FORMS}; got keys {sorted(keys)}")
