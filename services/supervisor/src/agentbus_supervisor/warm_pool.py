"""Warm spares: started, imported agents that take a dead replica's identity.

A replica's cold start is CPU-bound (the engine's work, the interpreter, the agent
library's imports: about 0.3 CPU-s); when many die at once on a small node they queue
at the start gate. A deployment with ``warm_spares`` > 0 has that many spares kept on
every node that runs replicas of it: instances of the same image, command, env and
limits, started without ``AGENTBUS_AGENT_ID`` / ``AGENTBUS_AGENT_REPLICA`` and blocked on
a FIFO (``agentbus.runtime.spare``). A replica start first claims a waiting spare: its
credentials are written into the spare's own directory (bind-mounted like a
replica's), a claim file records who it became (a restarted supervisor adopts it as
that replica), and the identity is written into the FIFO. Then the pool starts a new
spare in the background, through the start gate like any start.

A spare is ready when it holds the FIFO open for reading: opening it for writing
without blocking fails (``ENXIO``) until then, so a spare still importing is never
claimed. A spare that exits before its claim is replaced after the deployment's
restart backoff (a broken image cannot spin). The design and its figures:
``docs/decisions/0013-warm-spares.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from agentbus.errors import AgentBusError
from agentbus.messages import Deployment, utcnow
from agentbus.retry import backoff_s
from agentbus.runtime.spare import IDENTITY_ENV, SPARE_FIFO_ENV
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.runtime import (
    CONTAINER_CREDS_DIR,
    CREDS_FILE_NAME,
    LABEL_AGENT_ID,
    LABEL_REPLICA,
    LABEL_SPEC,
    ReplicaHandle,
    ReplicaSpec,
    Runtime,
)
from agentbus_supervisor.start_gate import StartGate

if TYPE_CHECKING:
    from agentbus_supervisor.credentials import ReplicaCredentials

FIFO_NAME = "identity.fifo"
CLAIM_FILE = "claim.json"
SPARE_REPLICA = -1
"""The replica index of every spare (labels, handles): never a placed replica's."""
_STOP_GRACE_S = 1.0
_PER_INSTANCE_ENV = (*IDENTITY_ENV, SPARE_FIFO_ENV, "AGENTBUS_CREDS_FILE")


def template_digest(spec: ReplicaSpec) -> str:
    """``ReplicaSpec.digest`` without what differs between instances (identity, paths).

    A spare serves a replica only when their template digests are equal.
    """
    env = {k: v for k, v in spec.env.items() if k not in _PER_INSTANCE_ENV}
    return dataclasses.replace(spec, env=env).digest


def is_spare(handle: ReplicaHandle) -> bool:
    """Whether ``handle`` is a warm spare (claimed or not) rather than a started replica."""
    return handle.replica == SPARE_REPLICA


@dataclass
class _Spare:
    spare_id: str
    deployment: str
    template: str
    handle: ReplicaHandle | None = None  # None while its start is under way
    waiter: asyncio.Task[None] | None = None


class WarmPool:
    """This node's warm spares, by deployment (one instance per supervisor).

    Args:
        runtime: starts and stops the spares.
        gate: the node's start gate (a spare's start holds a slot for the engine call).
        own_dir: where spare directories are made, as this process sees it.
        host_dir: ``own_dir`` as the container engine sees it (bind mounts).
    """

    def __init__(
        self,
        runtime: Runtime,
        gate: StartGate,
        metrics: SupervisorMetrics,
        own_dir: Path,
        host_dir: Path | None = None,
    ) -> None:
        self.runtime = runtime
        self.gate = gate
        self.metrics = metrics
        self.own_dir = own_dir
        self.host_dir = host_dir or own_dir
        self._spares: dict[str, _Spare] = {}
        self._wanted: dict[str, tuple[Deployment, ReplicaSpec]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    # -- what is wanted ---------------------------------------------------------------
    def want(self, templates: Mapping[str, tuple[Deployment, ReplicaSpec]]) -> None:
        """Keep ``warm_spares`` spares of each deployment, built like the spec given.

        ``templates``: deployment name -> (deployment, the spec of one of its replicas
        on this node). Spares of other deployments or of an older spec are stopped.
        """
        self._wanted = {k: v for k, v in templates.items() if v[0].warm_spares > 0}
        self._changed.set()

    def ready(self, deployment: str) -> int:
        """How many spares of ``deployment`` are started (ready or still importing)."""
        return sum(1 for s in self._spares.values() if s.deployment == deployment and s.handle)

    async def run(self, stop: asyncio.Event) -> None:
        """Start and stop spares to match ``want`` until ``stop`` is set."""
        while not stop.is_set():
            changed = asyncio.create_task(self._changed.wait())
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stopped.cancel()
            self._changed.clear()
            if not stop.is_set():
                await self._settle(stop)

    async def _settle(self, stop: asyncio.Event) -> None:
        for spare in list(self._spares.values()):
            wanted = self._wanted.get(spare.deployment)
            if spare.handle and (wanted is None or template_digest(wanted[1]) != spare.template):
                del self._spares[spare.spare_id]
                if spare.waiter is not None:
                    spare.waiter.cancel()
                logger.info("warm spare no longer wanted", spare=spare.spare_id)
                self._background_stop(spare.handle, spare.spare_id)
                self.metrics.warm_spares.set(self._count())
        for name, (deployment, spec) in list(self._wanted.items()):
            delay_s = self._not_before.get(name, 0.0) - time.monotonic()
            if delay_s > 0:
                asyncio.get_running_loop().call_later(delay_s, self._changed.set)
                continue
            while not stop.is_set() and self._wanted.get(name) == (deployment, spec):
                have = sum(1 for s in self._spares.values() if s.deployment == name)
                if have >= deployment.warm_spares or not await self._start(deployment, spec):
                    break

    async def _start(self, deployment: Deployment, spec: ReplicaSpec) -> bool:
        spare_id = f"{deployment.name}-spare-{secrets.token_hex(4)}"
        folder = self.own_dir / spare_id
        spare = _Spare(spare_id, deployment.name, template_digest(spec))
        self._spares[spare_id] = spare
        try:
            folder.mkdir(mode=0o755, parents=True)
            os.mkfifo(folder / FIFO_NAME, 0o644)  # any container user may read it
            slot = await self.gate.acquire()
            try:
                handle = await self.runtime.start(self._spec(spec, spare_id))
            finally:
                slot.release()
        except (AgentBusError, OSError) as exc:
            del self._spares[spare_id]
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("warm spare not started", spare=spare_id, error=str(exc))
            self._failed(deployment)
            return False
        spare.handle = handle
        spare.waiter = asyncio.create_task(self._watch(spare, deployment))
        self.metrics.warm_spares.set(self._count())
        logger.info("warm spare started", spare=spare_id, deployment=deployment.name)
        return True

    def _spec(self, spec: ReplicaSpec, spare_id: str) -> ReplicaSpec:
        """The spare's spec: ``spec`` without identity, its own directory and FIFO."""
        env = {k: v for k, v in spec.env.items() if k not in IDENTITY_ENV}
        in_container = self.runtime.kind != "process"
        folder = CONTAINER_CREDS_DIR if in_container else str(self.own_dir / spare_id)
        env[SPARE_FIFO_ENV] = f"{folder}/{FIFO_NAME}"
        if "AGENTBUS_CREDS_FILE" in env:
            env["AGENTBUS_CREDS_FILE"] = f"{folder}/{CREDS_FILE_NAME}"
        spare = dataclasses.replace(
            spec,
            replica=SPARE_REPLICA,
            agent_id=spare_id,
            env=env,
            creds_file=str(self.host_dir / spare_id / CREDS_FILE_NAME),
            secrets_failure=None,
        )
        labels = {
            **spec.labels,
            LABEL_REPLICA: str(SPARE_REPLICA),
            LABEL_AGENT_ID: spare_id,
            LABEL_SPEC: spare.digest,
        }
        return dataclasses.replace(spare, labels=labels)

    async def _watch(self, spare: _Spare, deployment: Deployment) -> None:
        """Until the spare is claimed: if it exits, replace it (after a backoff)."""
        assert spare.handle is not None
        while True:
            try:
                info = await self.runtime.wait(spare.handle)
                break
            except AgentBusError as exc:
                logger.warning("warm spare wait failed", spare=spare.spare_id, error=str(exc))
                await asyncio.sleep(1.0)
        if self._spares.pop(spare.spare_id, None) is None:
            return
        self.metrics.spare_exits.inc()
        logger.warning(
            "warm spare exited before it was claimed",
            spare=spare.spare_id,
            exit_code=info.exit_code,
            reason=info.reason,
        )
        self._failed(deployment)
        self._background_stop(spare.handle, spare.spare_id)

    def _failed(self, deployment: Deployment) -> None:
        failures = self._failures[deployment.name] = self._failures.get(deployment.name, 0) + 1
        self._not_before[deployment.name] = time.monotonic() + backoff_s(
            deployment.backoff, failures
        )
        self.metrics.warm_spares.set(self._count())
        self._changed.set()

    # -- claims -----------------------------------------------------------------------
    async def claim(
        self,
        deployment: Deployment,
        spec: ReplicaSpec,
        credentials: ReplicaCredentials | None,
    ) -> ReplicaHandle | None:
        """Hand a ready spare the identity of ``spec``; its handle, or None (start cold).

        With ``credentials`` the replica's creds are written into the spare's
        directory first. A spare that fails its claim is stopped.
        """
        if deployment.warm_spares == 0:
            return None
        template = template_digest(spec)
        for spare in list(self._spares.values()):
            if spare.deployment != deployment.name or spare.template != template:
                continue
            if spare.handle is None or (fd := self._open(spare)) is None:
                continue  # starting, or still importing
            del self._spares[spare.spare_id]
            if spare.waiter is not None:
                spare.waiter.cancel()
            self.metrics.warm_spares.set(self._count())
            self._changed.set()  # start its successor
            try:
                handle = await self._hand_over(spare, deployment, spec, credentials, fd)
            except Exception as exc:
                self.metrics.spare_claims.labels("failed").inc()
                logger.warning("warm spare claim failed", spare=spare.spare_id, error=repr(exc))
                self._background_stop(spare.handle, spare.spare_id)
                return None
            finally:
                os.close(fd)
            self._failures.pop(deployment.name, None)
            self.metrics.spare_claims.labels("claimed").inc()
            logger.info("warm spare claimed", spare=spare.spare_id, agent_id=spec.agent_id)
            return handle
        self.metrics.spare_claims.labels("none").inc()
        return None

    def _open(self, spare: _Spare) -> int | None:
        """The FIFO opened for writing if the spare waits on it, else None."""
        try:
            return os.open(self.own_dir / spare.spare_id / FIFO_NAME, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads yet
                logger.warning("warm spare FIFO not opened", spare=spare.spare_id, error=str(exc))
            return None

    async def _hand_over(
        self,
        spare: _Spare,
        deployment: Deployment,
        spec: ReplicaSpec,
        credentials: ReplicaCredentials | None,
        fd: int,
    ) -> ReplicaHandle:
        if credentials is not None:
            await credentials.issue(deployment, spec.agent_id, folder=spare.spare_id)
        claim = {"deployment": spec.deployment, "replica": spec.replica}
        claim |= {"agent_id": spec.agent_id, "digest": spec.digest}
        (self.own_dir / spare.spare_id / CLAIM_FILE).write_text(json.dumps(claim))
        identity = {k: spec.env[k] for k in IDENTITY_ENV if k in spec.env}
        os.write(fd, json.dumps(identity).encode())  # one write below PIPE_BUF: atomic
        assert spare.handle is not None
        return dataclasses.replace(
            spare.handle,
            deployment=spec.deployment,
            replica=spec.replica,
            agent_id=spec.agent_id,
            digest=spec.digest,
            started_at=utcnow(),
            spare_id=spare.spare_id,
        )

    # -- restart, cleanup -------------------------------------------------------------
    def adopt(self, own: list[ReplicaHandle]) -> list[ReplicaHandle]:
        """Of the instances a restarted supervisor found, the replicas to adopt.

        A claimed spare comes back as the replica its claim file names; a spare never
        claimed (or whose claim file is unreadable) is stopped.
        """
        replicas = []
        for handle in own:
            if not is_spare(handle):
                replicas.append(handle)
                continue
            try:
                claim = json.loads((self.own_dir / handle.agent_id / CLAIM_FILE).read_text())
                adopted = dataclasses.replace(
                    handle,
                    deployment=str(claim["deployment"]),
                    replica=int(claim["replica"]),
                    agent_id=str(claim["agent_id"]),
                    digest=str(claim["digest"]),
                    spare_id=handle.agent_id,
                )
            except (OSError, ValueError, KeyError, TypeError):
                self._background_stop(handle, handle.agent_id)
                continue
            replicas.append(adopted)
        return replicas

    def forget(self, spare_id: str) -> None:
        """Delete a claimed spare's directory (its instance has been removed)."""
        if spare_id:
            shutil.rmtree(self.own_dir / spare_id, ignore_errors=True)

    async def close(self) -> None:
        """Stop every unclaimed spare and wait for the stops under way."""
        spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            if spare.waiter is not None:
                spare.waiter.cancel()
            if spare.handle is not None:
                self._background_stop(spare.handle, spare.spare_id)
        self.metrics.warm_spares.set(0)
        await asyncio.gather(*self._background, return_exceptions=True)

    def _count(self) -> int:
        return sum(1 for s in self._spares.values() if s.handle is not None)

    def _background_stop(self, handle: ReplicaHandle, spare_id: str) -> None:
        async def stop() -> None:
            try:
                await self.runtime.stop(handle, _STOP_GRACE_S)
            except AgentBusError as exc:
                logger.warning("warm spare not stopped", spare=spare_id, error=str(exc))
            self.forget(spare_id)

        task = asyncio.create_task(stop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
