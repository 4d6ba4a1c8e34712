"""Each replica's own NATS credentials: minted at start, renewed, revoked at the end.

With ``SUPERVISOR_AUTH_DIR`` set (the directory ``agentbus auth init`` made), the
supervisor provisions what a replica reads (``agentbus.auth.provision``) and mints it
a user scoped from its deployment and agent id before every start. A restart of a
replica already provisioned for the same deployment does not wait for that (after a
server's loss each request may wait for a new consumer leader): it is done again in
the background, which still brings back a consumer deleted meanwhile. The creds file is
written to ``creds_dir`` and reaches the agent as a file (``AGENTBUS_CREDS_FILE``;
a read-only bind mount in a container), never as an environment value, which
``docker inspect`` shows. The JWT expires after ``replica_creds_ttl_s`` and is renewed
at half of it while the replica lives (the agent's client re-reads the file when the
server ends its expired session). When the replica ends its file is deleted and its
users are revoked at once if this supervisor holds the operator key
(``agentbus.auth.revocation``); otherwise they lapse when they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from agentbus.auth.authority import AuthDir, Authority, write_secret
from agentbus.auth.provision import mint_agent, provision_agent
from agentbus.auth.revocation import Revoker
from agentbus.bus import Bus
from agentbus.messages import Deployment, encode
from agentbus_supervisor.runtime import CREDS_FILE_NAME

REVOKE_WAIT_S = 10.0
"""Longest a replica's stop waits for its users' revocation (then it goes on)."""


@dataclass
class _Issued:
    deployment: Deployment
    folder: str
    """The directory (under ``creds_dir``) its file is in: the agent id, or a spare's."""
    users: dict[str, float] = field(default_factory=dict)
    """User public key -> Unix time its JWT expires."""
    renew_at: float = 0.0


class ReplicaCredentials:
    """The credentials of this node's replicas (one instance per supervisor).

    Args:
        bus: the supervisor's connection (provisions consumers).
        auth_dir: the fleet's auth directory (its signing key mints users).
        creds_dir: where creds files are written, one per agent id (mode 0700 dir).
        host_dir: ``creds_dir`` as the container engine sees it (bind mounts);
            default: the same path.
        ttl_s: lifetime of each minted JWT, seconds.
    """

    def __init__(
        self,
        bus: Bus,
        auth_dir: Path,
        creds_dir: Path,
        *,
        host_dir: Path | None = None,
        ttl_s: float = 3600.0,
    ) -> None:
        self.bus = bus
        self.auth = AuthDir(auth_dir)
        self.authority = Authority(self.auth)
        self.creds_dir = creds_dir
        self.host_dir = host_dir or creds_dir
        self.ttl_s = ttl_s
        self.revoker = Revoker.for_dir(self.auth, bus.settings)
        self._issued: dict[str, _Issued] = {}
        # agent id -> the deployment its consumers were made for: a restart of the same
        # replica does not wait for them to be made again
        self._provisioned: dict[str, bytes] = {}
        self._provisioning: set[asyncio.Task[None]] = set()
        creds_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(creds_dir, 0o700)

    def path(self, agent_id: str) -> Path:
        """The creds file of ``agent_id`` as this process sees it (a directory per agent)."""
        return self.creds_dir / agent_id / CREDS_FILE_NAME

    def host_path(self, agent_id: str) -> Path:
        """The creds file of ``agent_id`` as the container engine sees it."""
        return self.host_dir / agent_id / CREDS_FILE_NAME

    async def issue(self, deployment: Deployment, agent_id: str, *, folder: str = "") -> Path:
        """Provision what the replica reads and write it fresh credentials.

        The file goes to ``creds_dir/<folder>`` (default: the agent id; a warm spare
        taking the identity has its own). Users issued to an earlier instance of the
        replica are revoked, and its file deleted if it was elsewhere.

        Raises:
            ContractError: the deployment declares an invalid topic pattern.
            nats.js.errors.Error: a consumer or trace kind could not be made.
        """
        spec = encode(deployment)
        if self._provisioned.get(agent_id) != spec:
            await provision_agent(self.bus, deployment, agent_id)
            self._provisioned[agent_id] = spec
        else:  # made before: again in the background (heals a deleted consumer)
            task = asyncio.create_task(self._provision_again(deployment, agent_id))
            self._provisioning.add(task)
            task.add_done_callback(self._provisioning.discard)
        previous = self._issued.pop(agent_id, None)
        issued = _Issued(deployment, folder or agent_id)
        self._issued[agent_id] = issued
        self._write(agent_id, issued)
        if previous is not None:
            if previous.folder != issued.folder:
                self._delete(previous.folder)
            await self._revoke(agent_id, previous.users)
        return self.creds_dir / issued.folder / CREDS_FILE_NAME

    async def _provision_again(self, deployment: Deployment, agent_id: str) -> None:
        try:
            await provision_agent(self.bus, deployment, agent_id)
        except Exception as exc:  # the agent waits for its consumers (``Rebinder``)
            logger.warning("consumers not provisioned", agent_id=agent_id, error=repr(exc))

    async def release(self, agent_id: str) -> None:
        """The replica ended for good: delete its creds file, revoke its users."""
        self._provisioned.pop(agent_id, None)  # a later start provisions it first
        issued = self._issued.pop(agent_id, None)
        self._delete(issued.folder if issued is not None else agent_id)
        if issued is not None:
            await self._revoke(agent_id, issued.users)

    async def renew(self, stop: asyncio.Event) -> None:
        """Renew each live replica's JWT at half its lifetime, until ``stop`` is set.

        Background provisioning still running then is cancelled.
        """
        try:
            while not stop.is_set():
                now = time.time()
                for agent_id, issued in list(self._issued.items()):
                    if now >= issued.renew_at:
                        try:
                            self._write(agent_id, issued)
                        except OSError as exc:
                            logger.error(
                                "credentials not renewed", agent_id=agent_id, error=str(exc)
                            )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self.ttl_s / 4, 30.0))
        finally:
            for task in self._provisioning:
                task.cancel()
            await asyncio.gather(*self._provisioning, return_exceptions=True)

    def _delete(self, folder: str) -> None:
        """Delete the creds file in ``folder`` and the folder if nothing else is in it."""
        path = self.creds_dir / folder / CREDS_FILE_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def _write(self, agent_id: str, issued: _Issued) -> None:
        creds = mint_agent(self.authority, self.bus, issued.deployment, agent_id, ttl_s=self.ttl_s)
        assert creds.expires_at_s is not None
        # 0644 in a 0755 directory of its own inside a 0700 one: no other host user
        # reaches it, while the container's user (any uid) reads the one directory
        # mounted into it. A renewal replaces the file by rename: the container sees the
        # new one because its directory, not the file, is mounted.
        path = self.creds_dir / issued.folder / CREDS_FILE_NAME
        path.parent.mkdir(mode=0o755, exist_ok=True)
        write_secret(path, creds.creds_text())
        os.chmod(path, 0o644)
        issued.users[creds.public_key] = creds.expires_at_s
        issued.renew_at = time.time() + self.ttl_s / 2
        logger.info("credentials issued", agent_id=agent_id, user=creds.public_key)

    async def _revoke(self, agent_id: str, users: dict[str, float]) -> None:
        """Revoke ``users``, waiting at most ``REVOKE_WAIT_S`` (then they still expire).

        A replica's stop (a fence's too) must not hang on a cluster that does not answer.
        """
        if self.revoker is None or not users:
            return
        task = asyncio.create_task(self.revoker.revoke(users))
        done, _ = await asyncio.wait({task}, timeout=REVOKE_WAIT_S)
        if not done:  # left to finish or fail by itself (not awaited: it may not end)
            self._provisioning.add(task)
            task.add_done_callback(self._provisioning.discard)
            logger.warning("credentials not revoked in time", agent_id=agent_id)
        elif (exc := task.exception()) is not None:  # they still expire
            logger.warning("credentials not revoked", agent_id=agent_id, error=repr(exc))
