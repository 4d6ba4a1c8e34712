"""The fleet's credentials: keys, the server's auth configuration, minted users.

Decentralized JWT auth (``docs/decisions/0003-nats-auth.md``): an operator signs two
accounts, ``SYS`` (the server's system account) and ``AGENTBUS`` (the fleet, with
JetStream); the fleet account has a signing key that mints user JWTs on demand. The
server trusts the operator and resolves accounts from its own store (``resolver: full``,
preloaded), so minting a user needs no server change and works the same on every
server of a cluster. Users expire (``exp``) or are revoked by a new account JWT
(``revoke``), pushed to the servers over the system account.

Directory layout (``AuthDir``; every file under it is secret unless named ``*.jwt``)::

    operator.nk  operator.jwt          the operator's identity key and JWT
    sys.nk       sys.jwt               the system account
    account.nk   account.jwt           the fleet account
    signing.nk                         the fleet account's signing key (mints users)
    server.conf                        include this in nats-server's configuration
    creds/<identity>.creds             one per service, the operator and ``sys``
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

from agentbus.auth import nats_jwt
from agentbus.auth.creds import Credentials as Credentials  # re-exported
from agentbus.auth.creds import creds_outdated
from agentbus.auth.creds import write_secret as write_secret  # re-exported
from agentbus.auth.permissions import (
    OPTIONAL_SERVICES,
    SERVICES,
    Permissions,
    operator_permissions,
    service_permissions,
)
from agentbus.errors import ContractError
from agentbus.names import Names

ACCOUNT_NAME = "AGENTBUS"
"""The fleet's account."""
_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
    "max_ack_pending": -1,
    "mem_max_stream_bytes": -1,
    "disk_max_stream_bytes": -1,
    "max_bytes_required": False,
}


class AuthDir:
    """The files of one fleet's credentials (see the module docstring).

    Raises (from the accessors):
        ContractError: a file is missing: run ``agentbus auth init`` first.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def server_conf(self) -> Path:
        """The nats-server include file (operator, system account, resolver)."""
        return self.path / "server.conf"

    def creds(self, identity: str) -> Path:
        """The creds file of ``identity`` (a service name, ``operator`` or ``sys``)."""
        return self.path / "creds" / f"{identity}.creds"

    def exists(self) -> bool:
        """Whether ``init`` has run here."""
        return (self.path / "signing.nk").exists() and self.server_conf.exists()

    def read(self, name: str) -> str:
        """The text of file ``name`` in the directory.

        Raises:
            ContractError: the file is missing.
        """
        try:
            return (self.path / name).read_text().strip()
        except FileNotFoundError as exc:
            raise ContractError(
                f"{self.path / name} is missing: run `agentbus auth init {self.path}` first"
            ) from exc

    def claims(self, name: str) -> dict[str, Any]:
        """The claims of the JWT in file ``name`` (``account.jwt``, ...).

        Raises:
            ContractError: the file is missing or holds no valid JWT (the message names
                the file and how to repair it).
        """
        text = self.read(name)
        try:
            return nats_jwt.decode(text)
        except ContractError as exc:
            raise ContractError(
                f"{self.path / name}: {exc}; restore it from a backup, or make new keys "
                f"with `agentbus auth init {self.path} --force` (every identity changes)"
            ) from exc

    def keypair(self, name: str) -> nkeys.KeyPair:
        """The key pair stored in ``<name>.nk``."""
        return nats_jwt.keypair_from_seed(self.read(f"{name}.nk"))


def _account_jwt(
    operator: nkeys.KeyPair,
    account: nkeys.KeyPair,
    name: str,
    *,
    signing: nkeys.KeyPair | None = None,
    revocations: dict[str, int] | None = None,
    issued_at_s: float | None = None,
) -> str:
    limits = dict(_UNLIMITED)
    if signing is None:  # the system account: no JetStream
        limits.update(mem_storage=0, disk_storage=0, streams=0, consumer=0)
    nats: dict[str, object] = {"limits": limits}
    if signing is not None:
        nats["signing_keys"] = [nats_jwt.public_key(signing)]
    if revocations:
        nats["revocations"] = dict(revocations)
    nats["default_permissions"] = {"pub": {}, "sub": {}}
    return nats_jwt.encode(
        "account",
        subject=nats_jwt.public_key(account),
        name=name,
        issuer=operator,
        nats=nats,
        issued_at_s=issued_at_s,
    )


def init_auth(
    path: Path | str,
    *,
    prefix: str = "agentbus",
    force: bool = False,
    reissued: list[str] | None = None,
) -> AuthDir:
    """Create the keys, the server include file and the creds files in ``path``.

    Makes the operator, both accounts, the signing key, and a creds file per service
    (but the supervisors, which are minted per node) and for the operator.

    Idempotent: an existing directory is kept unless ``force``. New creds are minted
    for identities missing one and for those (the supervisors' included) whose JWT,
    issued for fleet ``prefix``, grants other permissions than this version gives
    them: a directory made by an older agentbus would otherwise keep services from
    what they now need (a new bucket, say) and fail on permission violations. Creds
    issued for another prefix, and files this process may not read, are left alone.
    ``reissued`` (if given) receives the identity of each creds file minted.

    Returns:
        The directory.
    """
    auth = AuthDir(path)
    if not auth.exists() or force:
        auth.path.mkdir(parents=True, exist_ok=True)
        os.chmod(auth.path, 0o700)
        operator = nats_jwt.new_keypair("operator")
        sys_account = nats_jwt.new_keypair("account")
        account = nats_jwt.new_keypair("account")
        signing = nats_jwt.new_keypair("account")
        for name, kp in (
            ("operator", operator),
            ("sys", sys_account),
            ("account", account),
            ("signing", signing),
        ):
            write_secret(auth.path / f"{name}.nk", nats_jwt.seed(kp) + "\n")
        sys_jwt = _account_jwt(operator, sys_account, "SYS")
        operator_jwt = nats_jwt.encode(
            "operator",
            subject=nats_jwt.public_key(operator),
            name="agentbus",
            issuer=operator,
            nats={"system_account": nats_jwt.public_key(sys_account)},
        )
        account_jwt = _account_jwt(operator, account, ACCOUNT_NAME, signing=signing)
        (auth.path / "operator.jwt").write_text(operator_jwt + "\n")
        (auth.path / "sys.jwt").write_text(sys_jwt + "\n")
        (auth.path / "account.jwt").write_text(account_jwt + "\n")
        write_server_conf(auth)
        for stale in auth.path.glob("creds/*.creds"):
            stale.unlink()
    authority = Authority(auth)
    names = Names(prefix)
    minted = reissued if reissued is not None else []
    for service in (*SERVICES, *OPTIONAL_SERVICES):
        if service != "supervisor" and creds_outdated(
            auth.creds(service), service_permissions(names, service), prefix
        ):
            minted.append(service_creds(auth, prefix, service).stem)
    for path in auth.path.glob("creds/supervisor-*.creds"):
        node_id = path.stem.removeprefix("supervisor-")
        permissions = service_permissions(names, "supervisor", node_id=node_id)
        if creds_outdated(path, permissions, prefix):
            minted.append(service_creds(auth, prefix, "supervisor", node_id=node_id).stem)
    if creds_outdated(auth.creds("operator"), operator_permissions("operator"), None):
        creds = authority.mint("operator", operator_permissions("operator"))
        write_secret(auth.creds("operator"), creds.creds_text())
        minted.append("operator")
    if not auth.creds("sys").exists():
        write_secret(auth.creds("sys"), authority.mint_system_user().creds_text())
    return auth


def server_conf_text(auth: AuthDir, *, resolver_dir: str | None = None) -> str:
    """The nats-server configuration lines of ``auth``: trust the operator and accounts.

    No secret inside (public keys and JWTs only); both accounts are preloaded.

    ``resolver_dir``: where the server keeps account JWTs (``resolver: full``); by
    default ``<dir>/resolver`` (each server of a cluster needs its own). Put the text in
    the server's configuration file itself: an ``include`` resolves relative to that file.

    Raises:
        ContractError: a JWT of ``auth`` is missing.
    """
    sys_pub = auth.claims("sys.jwt")["sub"]
    account_pub = auth.claims("account.jwt")["sub"]
    store = resolver_dir or str(auth.path / "resolver")
    return (
        "# agentbus decentralized auth: written by `agentbus auth init`, no secrets inside.\n"
        f"operator: {json.dumps(auth.read('operator.jwt'))}\n"
        f"system_account: {sys_pub}\n"
        "# A CONNECT line carries the user JWT: allow-lists of a service or of an agent\n"
        "# with several capabilities exceed the 4 KiB default.\n"
        "max_control_line: 64KB\n"
        "resolver: {\n"
        "  type: full\n"
        f"  dir: {json.dumps(store)}\n"
        "  allow_delete: false\n"
        '  interval: "2m"\n'
        "}\n"
        "resolver_preload: {\n"
        f"  {sys_pub}: {json.dumps(auth.read('sys.jwt'))}\n"
        f"  {account_pub}: {json.dumps(auth.read('account.jwt'))}\n"
        "}\n"
    )


def write_server_conf(auth: AuthDir, *, resolver_dir: str | None = None) -> None:
    """(Re)write ``auth.server_conf`` with ``server_conf_text(auth, resolver_dir=)``."""
    auth.server_conf.write_text(server_conf_text(auth, resolver_dir=resolver_dir))


def service_creds(
    auth: AuthDir | Path | str,
    prefix: str,
    service: str,
    *,
    node_id: str | None = None,
    path: Path | None = None,
) -> Path:
    """Mint a new identity of ``service`` on fleet ``prefix`` and write its creds file.

    A supervisor's identity is per node (its subjects name ``node_id``): the file is
    ``creds/supervisor-<node_id>.creds``; any other service's is ``creds/<service>.creds``.
    ``path`` writes it elsewhere. An existing file is replaced (mode 0600).

    Returns:
        The creds file's path.

    Raises:
        ValueError: unknown service, or a supervisor without ``node_id``.
        ContractError: the directory lacks the signing key (run ``agentbus auth init``).
    """
    auth = auth if isinstance(auth, AuthDir) else AuthDir(auth)
    permissions = service_permissions(Names(prefix), service, node_id=node_id)
    name = f"{service}-{node_id}" if service == "supervisor" else service
    creds = Authority(auth).mint(name, permissions)
    target = path or auth.creds(name)
    write_secret(target, creds.creds_text())
    return target


AUTH_FILES = ("operator.jwt", "sys.jwt", "account.jwt", "signing.nk", "server.conf")
"""What a server and a minting supervisor need of an auth directory."""


def missing_auth_files(auth: AuthDir, identities: tuple[str, ...] = ()) -> list[str]:
    """The files ``auth`` lacks: of ``AUTH_FILES`` and ``creds/<identity>.creds``.

    A file that is empty or unreadable counts as missing; an empty list: complete.
    """
    names = [*AUTH_FILES, *(f"creds/{i}.creds" for i in identities)]
    missing = []
    for name in names:
        try:
            with (auth.path / name).open("rb") as f:
                if not f.read(1):
                    missing.append(name)
        except OSError:
            missing.append(name)
    return missing


class Authority:
    """Mints users of the fleet account with its signing key.

    Holders: ``agentbus auth`` (an operator's machine) and each supervisor (for the
    replicas it starts).
    """

    def __init__(self, auth: AuthDir) -> None:
        self.auth = auth
        self._signing = auth.keypair("signing")
        self._account_pub = auth.claims("account.jwt")["sub"]

    @property
    def account_public_key(self) -> str:
        """The fleet account's public key (``A...``)."""
        return str(self._account_pub)

    def mint(
        self,
        name: str,
        permissions: Permissions,
        *,
        expires_in_s: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> Credentials:
        """A new user named ``name`` with ``permissions``, signed by the signing key.

        ``expires_in_s``: lifetime; None: no expiry (service identities).
        """
        user = nats_jwt.new_keypair("user")
        expires_at = time.time() + expires_in_s if expires_in_s is not None else None
        nats = {**permissions.claims(), "issuer_account": self._account_pub}
        if tags:
            nats["tags"] = list(tags)
        token = nats_jwt.encode(
            "user",
            subject=nats_jwt.public_key(user),
            name=name,
            issuer=self._signing,
            nats=nats,
            expires_at_s=expires_at,
        )
        return Credentials(name, token, nats_jwt.seed(user), nats_jwt.public_key(user), expires_at)

    @staticmethod
    def authority_public_key_of(seed: str) -> str:
        """The public key (``U...``) of a user's nkey seed."""
        return nats_jwt.public_key(nats_jwt.keypair_from_seed(seed))

    def mint_system_user(self) -> Credentials:
        """A user of the system account (pushes account updates: ``revoke``)."""
        sys_account = self.auth.keypair("sys")
        user = nats_jwt.new_keypair("user")
        token = nats_jwt.encode(
            "user",
            subject=nats_jwt.public_key(user),
            name="sys",
            issuer=sys_account,
            nats={"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        return Credentials("sys", token, nats_jwt.seed(user), nats_jwt.public_key(user), None)

    def revoked_account_jwt(self, revocations: dict[str, int]) -> str:
        """The fleet account's JWT with ``revocations``, signed by the operator key.

        ``revocations`` maps a user public key to a Unix time: JWTs of that user
        issued at or before it are refused. Its ``iat`` is later than the current
        account JWT's: servers keep the newer of two account JWTs, so a later
        revocation always replaces an earlier one.
        """
        current = int(self.auth.claims("account.jwt").get("iat", 0))
        return _account_jwt(
            self.auth.keypair("operator"),
            self.auth.keypair("account"),
            ACCOUNT_NAME,
            signing=self._signing,
            revocations=revocations,
            issued_at_s=max(time.time(), current + 1),
        )
