"""Warm spares: started, imported agents that take a dead replica's identity.

A replica's cold start is CPU-bound (the engine's work, the interpreter, the agent
library's imports: about 0.3 CPU-s); when many die at once on a small node they queue
at the start gate. A deployment with ``warm_spares`` > 0 has that many spares kept on
every node that runs replicas of it: instances of the same image, command, env and
limits, started without ``AGENTBUS_AGENT_ID`` / ``AGENTBUS_AGENT_REPLICA``
(``agentbus.runtime.spare``, ``spares``). A spare says it is ready through its ready
FIFO once imported, then blocks on its identity FIFO. A replica start first claims a
ready spare: its credentials are written into the spare's own directory (bind-mounted
like a replica's), a claim file records who it became (a restarted supervisor adopts
it as that replica), and the identity is written into the FIFO; the start needs no
start slot. Once no claim came for ``REFILL_QUIET_S`` the pool starts successors.

Spares start one at a time per node, each holding a start slot until it is ready (at
most ``READY_MAX_S``) and none while replicas are being claimed, so refilling the pool
never crowds out replica starts. A spare that exits unclaimed is replaced after the
deployment's restart backoff (a broken image cannot spin); one that is alive but not
ready in time (an agent that cannot wait) is stopped and its spec gets no more spares.
The design and its figures: ``docs/decisions/0013-warm-spares.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from agentbus.errors import AgentBusError
from agentbus.messages import Deployment, utcnow
from agentbus.retry import backoff_s
from agentbus.runtime.spare import IDENTITY_ENV, IDENTITY_FIFO, READY_FIFO
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.runtime import ReplicaHandle, ReplicaSpec, Runtime
from agentbus_supervisor.spares import (
    CLAIM_FILE,
    SPARE_ID,
    Spare,
    is_spare,
    new_spare_id,
    spare_spec,
    template_digest,
)
from agentbus_supervisor.start_gate import StartGate

if TYPE_CHECKING:
    from agentbus_supervisor.credentials import ReplicaCredentials

REFILL_QUIET_S = 2.0
"""After a claim, how long the pool waits for claims to stop before it starts successors:
replicas dying together are claimed together, and their spares' successors would only
take CPU from the replicas coming up."""
READY_MAX_S = 60.0
"""Longest a spare's start holds its start slot waiting for the spare to be ready."""
_STOP_GRACE_S = 1.0


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
        self._spares: dict[str, Spare] = {}
        self._wanted: dict[str, tuple[Deployment, ReplicaSpec]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._quiet_at = 0.0  # monotonic time from which refills may start
        self._silent: set[str] = set()  # templates whose spares never said they were ready
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
            if stop.is_set():
                return
            try:
                await self._settle(stop)
            except Exception:  # the pool must outlive one bad pass
                logger.exception("warm pool pass failed")
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _settle(self, stop: asyncio.Event) -> None:
        for spare in list(self._spares.values()):
            wanted = self._wanted.get(spare.deployment)
            if spare.handle and (wanted is None or template_digest(wanted[1]) != spare.template):
                logger.info("warm spare no longer wanted", spare=spare.spare_id)
                self._discard(spare)
        for name, (deployment, spec) in list(self._wanted.items()):
            if template_digest(spec) in self._silent:
                continue  # its agent never said it was ready: no spares of this spec
            while not stop.is_set() and self._wanted.get(name) == (deployment, spec):
                have = sum(1 for s in self._spares.values() if s.deployment == name)
                if have >= deployment.warm_spares:
                    break
                # checked before each start: a claim in between defers the rest
                not_before = max(self._not_before.get(name, 0.0), self._quiet_at)
                if (delay_s := not_before - time.monotonic()) > 0:
                    asyncio.get_running_loop().call_later(delay_s, self._changed.set)
                    break
                if not await self._start(deployment, spec):
                    break

    async def _start(self, deployment: Deployment, spec: ReplicaSpec) -> bool:
        spare_id = new_spare_id(deployment.name)
        folder = self.own_dir / spare_id
        spare = Spare(spare_id, deployment.name, template_digest(spec))
        self._spares[spare_id] = spare
        try:
            self.own_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as creds_dir
            folder.mkdir(mode=0o755)
            # any container user may read the one and write the other
            for name, mode in ((IDENTITY_FIFO, 0o644), (READY_FIFO, 0o622)):
                os.mkfifo(folder / name)
                os.chmod(folder / name, mode)  # not narrowed by the umask
            spare.listen(folder)
            slot = await self.gate.acquire()
        except OSError as exc:
            return self._not_started(spare, deployment, exc)
        try:  # the slot is held until the spare is ready: one import at a time
            try:
                spare.handle = await self.runtime.start(
                    spare_spec(spec, spare_id, self.runtime.kind, self.own_dir, self.host_dir)
                )
            except AgentBusError as exc:
                return self._not_started(spare, deployment, exc)
            spare.waiter = waiter = asyncio.create_task(self._watch(spare, deployment))
            ready = asyncio.create_task(spare.ready.wait())
            try:  # until ready, exited, or too slow
                await asyncio.wait(
                    {ready, waiter}, timeout=READY_MAX_S, return_when="FIRST_COMPLETED"
                )
            finally:
                ready.cancel()
        finally:
            slot.release()
        if not spare.ready.is_set():
            if spare_id in self._spares:  # alive but silent: not an agent that can wait
                logger.error(
                    "warm spare not ready in time; no more spares of this spec "
                    "(is the image an agentbus agent of this version?)",
                    spare=spare_id,
                    deployment=deployment.name,
                    ready_max_s=READY_MAX_S,
                )
                self._silent.add(spare.template)
                self._discard(spare)
            return False
        self.metrics.warm_spares.set(self._count())
        logger.info("warm spare ready", spare=spare_id, deployment=deployment.name)
        return True

    def _not_started(self, spare: Spare, deployment: Deployment, exc: Exception) -> bool:
        spare.close()
        self._spares.pop(spare.spare_id, None)
        shutil.rmtree(self.own_dir / spare.spare_id, ignore_errors=True)
        logger.warning("warm spare not started", spare=spare.spare_id, error=str(exc))
        self._failed(deployment)
        return False

    async def _watch(self, spare: Spare, deployment: Deployment) -> None:
        """Until the spare is claimed: if it exits, replace it (after a backoff)."""
        assert spare.handle is not None
        while True:
            try:
                info = await self.runtime.wait(spare.handle)
                break
            except AgentBusError as exc:
                logger.warning("warm spare wait failed", spare=spare.spare_id, error=str(exc))
                await asyncio.sleep(1.0)
        spare.close()
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
        directory first; if that fails (or is cancelled) the spare goes back to the
        pool. A spare that died since it said it was ready is stopped and the next tried.

        Raises:
            whatever ``ReplicaCredentials.issue`` raises (a cold start would as well).
        """
        if deployment.warm_spares == 0:
            return None
        template = template_digest(spec)
        for spare in list(self._spares.values()):
            if spare.deployment != deployment.name or spare.template != template:
                continue
            if spare.handle is None or not spare.ready.is_set():
                continue  # still starting or importing
            del self._spares[spare.spare_id]  # nobody else takes it from here
            self.metrics.warm_spares.set(self._count())
            try:
                if credentials is not None:
                    await credentials.issue(deployment, spec.agent_id, folder=spare.spare_id)
            except BaseException:  # refused or cancelled: the spare is left as it was
                self._put_back(spare)
                raise  # a cold start would meet the same refusal
            try:
                handle = self._hand_over(spare, spec)
            except OSError as exc:  # it died since it was ready
                self.metrics.spare_claims.labels("failed").inc()
                logger.warning("warm spare claim failed", spare=spare.spare_id, error=str(exc))
                self._discard(spare)
                continue
            if spare.waiter is not None:
                spare.waiter.cancel()
            self._failures.pop(deployment.name, None)
            self._quiet_at = time.monotonic() + REFILL_QUIET_S
            self._changed.set()  # start its successor once claims stop
            self.metrics.spare_claims.labels("claimed").inc()
            logger.info("warm spare claimed", spare=spare.spare_id, agent_id=spec.agent_id)
            return handle
        self.metrics.spare_claims.labels("none").inc()
        return None

    def _put_back(self, spare: Spare) -> None:
        """Return an untouched spare to the pool (or clean up if it died meanwhile)."""
        if spare.waiter is not None and not spare.waiter.done():
            self._spares[spare.spare_id] = spare
            self.metrics.warm_spares.set(self._count())
        else:
            self._discard(spare)

    def _hand_over(self, spare: Spare, spec: ReplicaSpec) -> ReplicaHandle:
        """Record the claim and write the identity (no await: no cancellation between).

        Raises:
            OSError: the spare no longer reads its FIFO (ENXIO), or a file write failed.
        """
        folder = self.own_dir / spare.spare_id
        claim = {"deployment": spec.deployment, "replica": spec.replica}
        claim |= {"agent_id": spec.agent_id, "digest": spec.digest}
        (folder / f"{CLAIM_FILE}.tmp").write_text(json.dumps(claim))
        os.replace(folder / f"{CLAIM_FILE}.tmp", folder / CLAIM_FILE)
        fd = os.open(folder / IDENTITY_FIFO, os.O_WRONLY | os.O_NONBLOCK)
        try:
            identity = {k: spec.env[k] for k in IDENTITY_ENV if k in spec.env}
            os.write(fd, json.dumps(identity).encode())  # one write below PIPE_BUF: atomic
        finally:
            os.close(fd)
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
        claimed (or whose claim file is unreadable) is stopped, and spare directories
        no instance names (an earlier supervisor's, the process runtime's) are deleted.
        """
        replicas, kept = [], set()
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
            kept.add(handle.agent_id)
        for folder in self.own_dir.glob("*-spare-*"):
            if SPARE_ID.fullmatch(folder.name) and folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)
        return replicas

    def forget(self, spare_id: str) -> None:
        """Delete a claimed spare's directory (its instance has been removed)."""
        if spare_id:
            shutil.rmtree(self.own_dir / spare_id, ignore_errors=True)

    async def close(self) -> None:
        """Stop every unclaimed spare and wait for the stops under way."""
        for spare in list(self._spares.values()):
            self._discard(spare)
        await asyncio.gather(*self._background, return_exceptions=True)

    def _discard(self, spare: Spare) -> None:
        """Take ``spare`` out of the pool and stop it."""
        self._spares.pop(spare.spare_id, None)
        spare.close()
        if spare.waiter is not None:
            spare.waiter.cancel()
        if spare.handle is not None:
            self._background_stop(spare.handle, spare.spare_id)
        else:
            self.forget(spare.spare_id)
        self.metrics.warm_spares.set(self._count())

    def _count(self) -> int:
        return sum(1 for s in self._spares.values() if s.ready.is_set())

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
