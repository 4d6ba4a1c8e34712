"""The supervisor: reconcile the replicas placed on this node with what runs here.

One supervisor runs per node. It

- heartbeats a ``NodeInfo`` into KV ``<p>_nodes`` (key = node id) every ``heartbeat_s``;
- mirrors KV ``<p>_placements`` (``Placement``, key ``<deployment>.<replica>``),
  KV ``<p>_deployments`` (``Deployment``, key = name) and KV ``<p>_agents`` (agent
  heartbeats) through ``KvMirror`` watches that start over after errors and NATS
  reconnects; the desired replicas are the placements naming this node whose
  deployment exists;
- starts missing replicas, stops (gracefully, within the deployment's
  ``stop_grace_s``) those no longer placed here, and replaces a replica whose spec
  (image, command, env, limits) changed; each replica's ``ReplicaRunner`` restarts it
  by policy (``replica``, ``restart_policy``, ``health``);
- on start, announces its node before it reconciles, and adopts the containers an
  earlier supervisor of this node left running (docker only) instead of starting
  duplicates; for ``adopt_grace_s`` it keeps such containers of replicas their
  deployment still asks for even while no placement names them (the scheduler
  places them again once the node is back after an outage);
- holds the fleet's secrets key (``secrets``): publishes its public half and opens a
  deployment's ``secret_env`` when it builds a replica's spec; a replica whose
  secrets do not open is not started (``failed``, see ``replica``);
- serves ``nats.micro`` service ``supervisor`` with ``<p>.supervisor.<node_id>.status``
  (``GetNodeStatus`` → ``NodeStatusReply``), including each running replica's CPU
  and memory as measured in the background every ``usage_sample_s`` (``usage``);
- fences itself when no heartbeat put has succeeded for ``fence_after_s`` (cut off
  from the bus: disconnected, or on a nats-server without quorum): stops every
  replica at once and starts none until a put succeeds and its watches have replayed
  the placements afresh (``fence``); ``NodeInfo.fenced`` says so meanwhile;
- on stop, stops every replica (unless ``stop_replicas_on_exit`` is off, so that a
  restarted supervisor adopts them) and deletes its node key.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec
from loguru import logger
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.bus.dial import bus_env
from agentbus.errors import AgentBusError
from agentbus.fleet.secrets import SecretsKeyring
from agentbus.kv.mirror import KvMirror
from agentbus.messages import (
    AgentInfo,
    Deployment,
    GetNodeStatus,
    NodeInfo,
    NodeStatusReply,
    Placement,
    encode,
    utcnow,
)
from agentbus.messages.fleet import Limits
from agentbus.names import check_token, replica_agent_id
from agentbus.service import MicroService, ServiceMetrics
from agentbus_supervisor.credentials import ReplicaCredentials
from agentbus_supervisor.fence import FENCE_STOP_GRACE_S, Fence
from agentbus_supervisor.metrics import SupervisorMetrics
from agentbus_supervisor.replica import ReplicaRunner, RunnerContext
from agentbus_supervisor.runtime import ReplicaHandle, ReplicaSpec, Runtime, build_spec
from agentbus_supervisor.runtimes import make_runtime
from agentbus_supervisor.secrets import load_keyring, open_secrets, publish_public_key
from agentbus_supervisor.settings import SupervisorSettings, creds_dir_for
from agentbus_supervisor.start_gate import StartGate
from agentbus_supervisor.usage import UsageSampler
from agentbus_supervisor.warm_pool import WarmPool

T = TypeVar("T", bound=msgspec.Struct)
SERVICE = "supervisor"
ReplicaKey = tuple[str, int]


class Supervisor:
    """Reconciles this node's placements with the replicas its runtime runs."""

    def __init__(
        self,
        bus: Bus,
        settings: SupervisorSettings,
        runtime: Runtime,
        registry: CollectorRegistry,
        keyring: SecretsKeyring | None = None,
    ) -> None:
        """``keyring``: default from ``settings`` (``secrets.load_keyring``).

        Raises:
            SecretError: a configured secrets key file cannot be read.
        """
        self.bus = bus
        self.settings = settings
        self.runtime = runtime
        self.node_id = check_token("node id", settings.node_id)
        self.metrics = SupervisorMetrics(registry)
        self.keyring = keyring or load_keyring(settings)
        self.service_metrics = ServiceMetrics(SERVICE, registry)
        self._dirty = asyncio.Event()
        names = bus.names
        self.deployments = self._mirror(names.deployments_bucket, "deployments", Deployment)
        self.placements = self._mirror(names.placements_bucket, "placements", Placement)
        self.agents = KvMirror(  # bad agent entries are the registry's to report
            bus,
            names.agents_bucket,
            AgentInfo,
            on_restart=self.metrics.watch_restarts.labels(names.agents_bucket).inc,
            check_s=settings.watch_check_s,
        )
        self.credentials = _replica_credentials(bus, settings)
        gate = StartGate(settings.start_limit)
        self.pool = WarmPool(
            runtime,
            gate,
            self.metrics,
            creds_dir_for(settings, names.prefix),
            settings.creds_host_dir,
        )
        self.ctx = RunnerContext(
            bus=bus,
            runtime=runtime,
            node_id=self.node_id,
            metrics=self.metrics,
            agents=self.agents,
            log_line_max_bytes=settings.log_line_max_bytes,
            gate=gate,
            credentials=self.credentials,
            pool=self.pool,
        )
        self.default_limits = Limits(
            memory_bytes=settings.docker_memory_bytes,
            cpus=settings.docker_nano_cpus / 1e9 if settings.docker_nano_cpus else None,
            pids=settings.docker_pids_limit,
        )
        self.started_at = utcnow()
        self.runners: dict[ReplicaKey, ReplicaRunner] = {}
        self.usage = UsageSampler(
            settings.usage_sample_s,
            runtime,
            lambda: [r.handle for r in self.runners.values() if r.handle and r.state == "running"],
            on_failure=self.metrics.usage_failures.inc,
        )
        self.adoptable: dict[ReplicaKey, ReplicaHandle] = {}
        self._adopted: set[ReplicaKey] = set()  # runners made from an adopted handle
        self._adopt_until = 0.0  # loop time at which the adoption grace ends
        self._beat = asyncio.Event()
        self._images: list[str] = []
        self._images_at = -math.inf  # loop time of the last image list
        self._stopping: dict[ReplicaKey, asyncio.Future[None]] = {}
        """Graceful stops under way, by replica: they run in the background (a long
        ``stop_grace_s`` must not hold up other replicas), and a replica is started
        again only once the stop of its previous instance has finished (same name)."""
        self._stopping_handles: dict[ReplicaKey, ReplicaHandle] = {}  # a fence kills them
        self._kills: set[asyncio.Future[None]] = set()
        self._node_revision = 0  # of our last node entry write; 0: none known
        self.fence = Fence(
            bus,
            self.node_id,
            settings.fence_timing,
            self.metrics,
            mirrors=(self.deployments, self.placements),
            on_fence=self._fence_replicas,
            on_unfence=self._dirty.set,
        )

    # -- node info and status ---------------------------------------------------------
    def node_info(self) -> NodeInfo:
        """This node's registry entry."""
        return NodeInfo(
            node_id=self.node_id,
            runtime=self.runtime.kind,
            started_at=self.started_at,
            heartbeat_at=utcnow(),
            labels=dict(self.settings.labels),
            capacity_replicas=self.settings.capacity_replicas,
            capacity_cpus=self.settings.capacity_cpus,
            capacity_memory_bytes=self.settings.capacity_memory_bytes,
            replicas=len(self.runners),
            hostname=socket.gethostname(),
            images=self._images,
            fenced=self.fence.fenced,
        )

    async def status(self, _: GetNodeStatus) -> NodeStatusReply:
        """Handler of ``<p>.supervisor.<node_id>.status``."""
        replicas = [
            (r := self.runners[k]).status(self.usage.of(r.handle)) for k in sorted(self.runners)
        ]
        return NodeStatusReply(node=self.node_info(), replicas=replicas)

    async def _heartbeat(self, kv: KeyValue, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if loop.time() - self._images_at >= self.settings.images_refresh_s:
                self._images_at = loop.time()
                try:
                    self._images = await self.runtime.images()
                except AgentBusError as exc:
                    logger.warning("cannot list images", error=str(exc))
            timeout_s = self.fence.timing.heartbeat_timeout_s
            try:
                entry_lost = await asyncio.wait_for(self._put_node(kv), timeout_s)
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self.metrics.heartbeat_failures.inc()
                logger.warning("node heartbeat failed", error=repr(exc))
            else:
                self.fence.beat(entry_lost=entry_lost)
            # Sleep until the next beat, or until a reconcile changed the replica count.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), self.settings.heartbeat_s)
            self._beat.clear()

    async def _put_node(self, kv: KeyValue) -> bool:
        """Write this node's entry; whether it had stopped being our last write.

        A compare-and-set on our last write's revision tells an entry that expired
        (or was deleted, or written by another) meanwhile: then a plain put.
        """
        value = encode(self.node_info())
        if self._node_revision:
            try:
                self._node_revision = await kv.update(self.node_id, value, self._node_revision)
                return False
            except KeyWrongLastSequenceError:
                pass
        self._node_revision = await kv.put(self.node_id, value)
        return True

    def _fence_replicas(self) -> None:
        """Stop every replica now (``FENCE_STOP_GRACE_S``); ``reconcile`` starts none."""
        for key, runner in self.runners.items():
            self._stop_later(key, runner.stop(FENCE_STOP_GRACE_S, reason="fenced"), runner.handle)
        for key, handle in self.adoptable.items():
            self._stop_later(key, self._stop_handle(handle, FENCE_STOP_GRACE_S), handle)
        for key, handle in self._stopping_handles.items():  # graceful stops under way
            if key not in self.runners and key not in self.adoptable:
                kill = asyncio.ensure_future(self._kill(handle))
                self._kills.add(kill)
                kill.add_done_callback(self._kills.discard)
        self.runners, self.adoptable = {}, {}
        self._adopted.clear()
        self.metrics.replicas.set(0)
        self._beat.set()

    async def _kill(self, handle: ReplicaHandle) -> None:
        try:
            await self.runtime.kill(handle)
        except AgentBusError as exc:
            logger.warning("replica kill failed", name=handle.name, error=str(exc))

    # -- watching the fleet buckets -----------------------------------------------------
    def _mirror(self, bucket: str, source: str, type_: type[T]) -> KvMirror[T]:
        return KvMirror(
            self.bus,
            bucket,
            type_,
            service_metrics=self.service_metrics,
            source=source,
            on_change=self._dirty.set,
            on_restart=self.metrics.watch_restarts.labels(bucket).inc,
            check_s=self.settings.watch_check_s,
        )

    # -- reconciling --------------------------------------------------------------------
    def desired(self) -> dict[ReplicaKey, Deployment]:
        """Replicas placed on this node whose deployment exists, with that deployment."""
        wanted: dict[ReplicaKey, Deployment] = {}
        deployments = self.deployments.values
        for p in self.placements.values.values():
            if p.node_id == self.node_id and (dep := deployments.get(p.deployment)):
                wanted[(p.deployment, p.replica)] = dep
        return wanted

    def _spec(self, deployment: Deployment, replica: int) -> ReplicaSpec:
        secret_env, failure = open_secrets(self.keyring, deployment)
        return build_spec(
            deployment,
            replica,
            node_id=self.node_id,
            prefix=self.bus.names.prefix,
            nats_url=self.settings.agent_nats_url or self.bus.settings.nats_url,
            runtime=self.runtime.kind,
            default_image=self.settings.docker_default_image,
            default_limits=self.default_limits,
            creds_file=(
                str(self.credentials.host_path(replica_agent_id(deployment.name, replica)))
                if self.credentials is not None
                else None
            ),
            bus_env=bus_env(self.bus.settings),
            secret_env=secret_env,
            secrets_failure=failure,
        )

    async def reconcile(self) -> None:
        """Start, stop and replace replicas until they match ``desired()``.

        Stops run in the background (``_stopping``); a replica whose previous instance
        is still stopping starts on the pass that follows the end of that stop. Does
        nothing while the node is fenced.
        """
        if self.fence.fenced:
            return
        wanted = self.desired()
        grace = asyncio.get_running_loop().time() < self._adopt_until
        for key, runner in list(self.runners.items()):
            dep = wanted.get(key)
            if dep is None and grace and key in self._adopted and self._wanted_at_all(key):
                self._stop_later(key, self._unadopt(key, self.runners.pop(key)), runner.handle)
            elif dep is None:
                self._stop_later(key, self.runners.pop(key).stop(reason="unplaced"), runner.handle)
            elif self._spec(dep, key[1]) != runner.spec:
                logger.info("replica spec changed; replacing", agent_id=runner.spec.agent_id)
                self._stop_later(key, self.runners.pop(key).stop(reason="replaced"), runner.handle)
            else:
                runner.deployment = dep
        for key, handle in list(self.adoptable.items()):
            if key not in wanted and not (grace and self._wanted_at_all(key)):
                del self.adoptable[key]
                self._stop_later(key, self._stop_handle(handle, self.settings.stop_grace_s), handle)
        for key, dep in sorted(wanted.items()):
            if key in self.runners or key in self._stopping:
                continue
            if len(self.runners) >= self.settings.capacity_replicas:
                logger.warning("node at capacity; replica not started", replica=key)
                break
            spec = self._spec(dep, key[1])
            adopted = self.adoptable.pop(key, None)
            if adopted is not None and not (adopted.running and adopted.digest == spec.digest):
                self._stop_later(key, self._stop_handle(adopted, dep.stop_grace_s), adopted)
                continue
            if self.runtime.kind == "process" and dep.limits != Limits():
                logger.warning("the process runtime does not enforce limits", replica=key)
            runner = ReplicaRunner(self.ctx, spec, dep, adopted=adopted)
            self.runners[key] = runner
            if adopted is not None:
                self._adopted.add(key)
            else:
                self._adopted.discard(key)
            runner.start()
        self.metrics.replicas.set(len(self.runners))
        self._want_spares(wanted)
        self._beat.set()

    def _want_spares(self, wanted: dict[ReplicaKey, Deployment]) -> None:
        """Ask the warm pool for the spares of the deployments with replicas here."""
        templates: dict[str, tuple[Deployment, ReplicaSpec]] = {}
        for (name, replica), dep in sorted(wanted.items()):
            if dep.warm_spares and name not in templates:
                spec = self._spec(dep, replica)
                if spec.secrets_failure is None:
                    templates[name] = (dep, spec)
        self.pool.want(templates)

    def _stop_later(
        self,
        key: ReplicaKey,
        stop: Coroutine[Any, Any, None],
        handle: ReplicaHandle | None = None,
    ) -> None:
        """Run ``stop`` (of ``handle``) in the background; reconcile again when it is done."""
        future = asyncio.ensure_future(stop)
        self._stopping[key] = future
        if handle is not None:
            self._stopping_handles[key] = handle

        def _done(f: asyncio.Future[None]) -> None:
            if self._stopping.get(key) is f:
                del self._stopping[key]
                self._stopping_handles.pop(key, None)
            if not f.cancelled() and (exc := f.exception()) is not None:
                logger.error("replica stop failed", replica=key, error=repr(exc))
            self._dirty.set()

        future.add_done_callback(_done)

    def _wanted_at_all(self, key: ReplicaKey) -> bool:
        """Whether the replica's deployment asks for it and no other node has it."""
        dep = self.deployments.values.get(key[0])
        placed = self.placements.values.get(f"{key[0]}.{key[1]}")
        elsewhere = placed is not None and placed.node_id != self.node_id
        return dep is not None and key[1] < dep.replicas and not elsewhere

    async def _unadopt(self, key: ReplicaKey, runner: ReplicaRunner) -> None:
        """Let go of an unplaced adopted replica within the adoption grace.

        It keeps running and stays adoptable: the scheduler may place it here again.
        """
        await runner.detach()
        if self.fence.fenced:
            await runner.stop(FENCE_STOP_GRACE_S, reason="fenced")
        elif runner.handle is not None and runner.state == "running":
            runner.handle.running = True
            self.adoptable[key] = runner.handle
            logger.info(
                "adopted replica unplaced; kept within the adoption grace",
                agent_id=runner.spec.agent_id,
            )
        else:
            await runner.stop(reason="unplaced")

    async def _stop_handle(self, handle: ReplicaHandle, grace_s: float) -> None:
        logger.info("stopping replica not placed here", name=handle.name)
        try:
            await self.runtime.stop(handle, grace_s)
        except AgentBusError as exc:
            logger.warning("replica stop failed", name=handle.name, error=str(exc))
        else:
            self.pool.forget(handle.spare_id)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconcile failed")
                await asyncio.sleep(1.0)
                self._dirty.set()

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop`` is set, then stop the replicas and leave the registry."""
        names = self.bus.names
        try:
            own = self.pool.adopt(await self.runtime.list_own())
        except AgentBusError as exc:
            logger.warning("cannot list existing replicas", error=str(exc))
            own = []
        # a running instance wins over an ended one of the same replica (an ended cold
        # instance not yet removed beside the claimed spare that replaced it)
        self.adoptable = {(h.deployment, h.replica): h for h in sorted(own, key=_running)}
        loop = asyncio.get_running_loop()
        self._adopt_until = loop.time() + self.settings.adopt_grace_s
        loop.call_later(self.settings.adopt_grace_s, self._dirty.set)  # settle leftovers
        nodes_kv = await self.bus.kv(names.nodes_bucket)
        # Announce the node before anything is reconciled: a scheduler that lost it
        # (an outage of both) places its replicas here again sooner.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._put_node(nodes_kv), self.fence.timing.heartbeat_timeout_s)
        await publish_public_key(
            self.bus,
            self.keyring,
            node_id=self.node_id,
            metrics=self.metrics,
            generated=self.settings.secrets_key_file is None,
        )
        micro = MicroService(self.bus, SERVICE, self.service_metrics)
        await micro.start()
        await micro.endpoint(
            "status", GetNodeStatus, self.status, subject=self.status_subject(names.prefix)
        )
        # The loops end on ``ending`` (not only by cancellation: nats-py may turn a
        # cancellation inside a request into a TimeoutError that a loop survives).
        ending = asyncio.Event()
        mirrors = (self.deployments, self.placements, self.agents)
        tasks = [
            asyncio.create_task(self._heartbeat(nodes_kv, ending)),
            asyncio.create_task(self.fence.run(ending)),
            asyncio.create_task(self.usage.run(ending)),
            asyncio.create_task(self.pool.run(ending)),
            *(asyncio.create_task(m.run(ending)) for m in mirrors),
        ]
        if self.credentials is not None:
            tasks.append(asyncio.create_task(self.credentials.renew(ending)))
        logger.info("supervisor started", node_id=self.node_id, runtime=self.runtime.kind)
        try:
            await self.deployments.ready.wait()
            await self.placements.ready.wait()
            self._dirty.set()  # first pass also settles adoptable leftovers
            tasks.append(asyncio.create_task(self._reconcile_loop()))
            await stop.wait()
        finally:
            ending.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await micro.stop()
            await self.shutdown()
            with contextlib.suppress(Exception):
                await nodes_kv.delete(self.node_id)
            logger.info("supervisor stopped", node_id=self.node_id)

    def status_subject(self, prefix: str) -> str:
        """``<p>.supervisor.<node_id>.status``."""
        return f"{prefix}.{SERVICE}.{self.node_id}.status"

    async def shutdown(self) -> None:
        """Stop every replica gracefully (or leave containers for adoption)."""
        runners, self.runners = list(self.runners.values()), {}
        await self.pool.close()
        await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        if self.settings.stop_replicas_on_exit or self.runtime.kind == "process":
            await asyncio.gather(*(r.stop(reason="supervisor-stopped") for r in runners))
        else:
            await asyncio.gather(*(r.detach() for r in runners))
        self.metrics.replicas.set(0)


def _running(handle: ReplicaHandle) -> bool:
    return handle.running


def _replica_credentials(bus: Bus, settings: SupervisorSettings) -> ReplicaCredentials | None:
    """The minter of replica credentials, if ``settings.auth_dir`` is set."""
    if settings.auth_dir is None:
        return None
    return ReplicaCredentials(
        bus,
        settings.auth_dir,
        creds_dir_for(settings, bus.names.prefix),
        host_dir=settings.creds_host_dir,
        ttl_s=settings.replica_creds_ttl_s,
    )


async def serve(
    bus: Bus, stop: asyncio.Event, settings: SupervisorSettings, registry: CollectorRegistry
) -> None:
    """Run this node's supervisor until ``stop`` is set, then clean up.

    Raises:
        UnavailableError: ``settings.runtime`` is ``docker`` and no engine answers.
        ContractError: ``settings.node_id`` is not a valid token.
        SecretError: a configured secrets key file cannot be read.
    """
    check_token("node id", settings.node_id)
    runtime = await make_runtime(settings, bus.names.prefix)
    try:
        await Supervisor(bus, settings, runtime, registry).run(stop)
    finally:
        await runtime.close()
