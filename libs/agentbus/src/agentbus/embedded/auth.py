"""The embedded stack's credentials: one identity per service, operator creds for itself.

With authentication on (the default), ``EmbeddedStack`` takes the fleet's keys from an
auth directory (``agentbus auth init``; by default a fresh one per stack in its
temporary directory), puts the operator and both accounts into nats-server's
configuration, and mints into its own temporary directory one creds file per
service for its prefix (the supervisor's for its node). It connects itself with the
directory's operator creds. An auth directory that lacks a file is refused: the
stack never falls back to running open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentbus.auth.authority import (
    AuthDir,
    init_auth,
    missing_auth_files,
    server_conf_text,
    service_creds,
)
from agentbus.errors import AuthenticationError, ContractError


@dataclass(frozen=True, slots=True)
class StackAuth:
    """What the processes of one embedded stack authenticate with.

    Attributes:
        auth_dir: the fleet's auth directory (keys, JWTs; the supervisor mints from it).
        operator_creds: full-access creds: the stack's own connection and the CLI's.
        service_creds: creds file by service name (the supervisor's is its node's).
        agent_creds_dir: where the supervisor writes the creds of the replicas it starts.
        server_conf: nats-server configuration lines (operator, accounts, resolver).
    """

    auth_dir: Path
    operator_creds: Path
    service_creds: dict[str, Path]
    agent_creds_dir: Path
    server_conf: str


def prepare_stack_auth(
    work_dir: Path,
    *,
    auth_dir: Path | None,
    prefix: str,
    services: tuple[str, ...],
    node_id: str,
    resolver_dir: Path,
) -> StackAuth:
    """Make the credentials of a stack whose private files live in ``work_dir``.

    ``auth_dir`` None: a new auth directory ``work_dir/auth`` (gone with the stack).

    Raises:
        AuthenticationError: ``auth_dir`` lacks a file, or one is unreadable; the
            message names them and how to repair (or ``--no-auth``).
    """
    if auth_dir is None:
        auth = init_auth(work_dir / "auth", prefix=prefix)
    else:
        auth = AuthDir(auth_dir)
        if missing := missing_auth_files(auth, ("operator",)):
            raise AuthenticationError(
                "missing",
                f"authentication is on but the auth directory {auth.path} is incomplete "
                f"(missing or unreadable: {', '.join(missing)}); refusing to start. "
                f"Repair it with `agentbus auth init {auth.path}` (keeps the keys it has) "
                "or `--force` (new keys), or start with --no-auth to run without "
                "authentication",
            )
    creds_dir = work_dir / "creds"
    minted: dict[str, Path] = {}
    try:
        for service in services:
            node = node_id if service == "supervisor" else None
            minted[service] = service_creds(
                auth, prefix, service, node_id=node, path=creds_dir / f"{service}.creds"
            )
        conf = server_conf_text(auth, resolver_dir=str(resolver_dir))
    except ContractError as exc:
        raise AuthenticationError(
            "unusable", f"cannot use the auth directory {auth.path}: {exc}"
        ) from exc
    agent_creds = work_dir / "agent-creds"
    agent_creds.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(creds_dir, 0o700)
    return StackAuth(
        auth_dir=auth.path,
        operator_creds=auth.creds("operator"),
        service_creds=minted,
        agent_creds_dir=agent_creds,
        server_conf=conf,
    )
