"""Revoking users at once: a new fleet account JWT, pushed to the servers.

A user JWT stays valid until it expires unless the account JWT lists its key under
``revocations`` (key -> Unix time; JWTs issued at or before it are refused, and the
server closes connections that hold one). The account JWT is signed by the operator,
so only a holder of the operator key can revoke; it pushes the new JWT over the
system account (``$SYS.REQ.CLAIMS.UPDATE``, resolver ``full``), which every server of
a cluster applies without a reload. Entries are kept until the JWTs they name would
have expired anyway, so the list stays as short as the live credentials.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
from loguru import logger

from agentbus.auth.authority import AuthDir, Authority, write_secret
from agentbus.errors import ContractError, UnavailableError
from agentbus.settings import BusSettings

CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
"""Where an operator pushes an account JWT to a ``full`` resolver."""


class Revoker:
    """Revokes users of the fleet account (needs ``operator.nk`` and ``creds/sys.creds``).

    The list is kept in ``<auth dir>/revocations.json`` (user key -> expiry, Unix s).
    """

    def __init__(self, auth: AuthDir, nats_url: str) -> None:
        self.auth = auth
        self.nats_url = nats_url
        self._file = auth.path / "revocations.json"
        self._lock = asyncio.Lock()  # one read-modify-push at a time

    @classmethod
    def for_dir(cls, auth: AuthDir, settings: BusSettings) -> Revoker | None:
        """A revoker if ``auth`` holds the operator key and the system creds, else None."""
        if not (auth.path / "operator.nk").exists() or not auth.creds("sys").exists():
            return None
        return cls(auth, settings.nats_url)

    def listed(self) -> dict[str, float]:
        """The revocations in force: user key -> when its last JWT expires."""
        try:
            entries = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:  # never read as "nothing revoked"
            raise ContractError(f"{self._file} is corrupt: {exc}") from exc
        now = time.time()
        return {k: float(v) for k, v in entries.items() if float(v) > now}

    async def revoke(self, users: dict[str, float]) -> None:
        """Revoke ``users`` (public key -> expiry of its JWT, Unix s) on every server.

        One revocation at a time per ``Revoker`` (the list is read, extended, pushed).

        Raises:
            UnavailableError: no server took the new account JWT.
            ContractError: the revocation list is corrupt.
        """
        async with self._lock:
            entries = {**self.listed(), **users}
            write_secret(self._file, json.dumps(entries))
            now = int(time.time())
            account_jwt = Authority(self.auth).revoked_account_jwt(dict.fromkeys(entries, now))
            await self.push(account_jwt)
            (self.auth.path / "account.jwt").write_text(account_jwt + "\n")
        logger.info("users revoked", users=sorted(users), listed=len(entries))

    async def push(self, account_jwt: str) -> None:
        """Send an account JWT to the servers' resolver over the system account.

        Raises:
            UnavailableError: the servers refused it or did not answer.
        """
        creds = str(self.auth.creds("sys"))
        try:
            nc = await nats.connect(
                self.nats_url.split(","),
                user_credentials=creds,
                connect_timeout=2,
                max_reconnect_attempts=1,
            )
        except Exception as exc:
            raise UnavailableError(f"cannot reach the system account: {exc!r}") from exc
        try:
            reply = await nc.request(CLAIMS_UPDATE, account_jwt.encode(), timeout=5)
        except Exception as exc:
            raise UnavailableError(f"account update not answered: {exc!r}") from exc
        finally:
            await nc.close()
        answer = json.loads(reply.data or b"{}")
        if "error" in answer:
            raise UnavailableError(f"account update refused: {answer['error']}")
