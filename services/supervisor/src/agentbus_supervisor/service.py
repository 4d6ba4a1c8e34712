"""The supervisor: reconcile the replicas placed on this node with what runs here.

One supervisor runs per node. It

- heartbeats a ``NodeInfo`` into KV ``<p>_nodes`` (key = node id) every ``heartbeat_s``;
- watches KV ``<p>_placements`` (``Placement``, key ``<deployment>.<replica>``) and
  KV ``<p>_deployments`` (``Deployment``, key = name); the desired replicas are the
  placements naming this node whose deployment exists;
- starts missing replicas, stops (gracefully) those no longer placed here, and
  replaces a replica whose spec (image, command, env) changed;
- on start, adopts the containers an earlier supervisor of this node left running
  (docker only) instead of starting duplicates;
- serves ``nats.micro`` service ``supervisor`` with ``<p>.supervisor.<node_id>.status``
  (``GetNodeStatus`` → ``NodeStatusReply``);
- on stop, stops every replica (unless ``stop_replicas_on_exit`` is off, so that a
  restarted supervisor adopts them) and deletes its node key.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import msgspec
from loguru import logger
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.errors import AgentBusError, UnavailableError
from agentbus.messages import (
    Deployment,
    GetNodeStatus,
    NodeInfo,
    NodeStatusReply,
    Placement,
    encode,
    utcnow,
)
from agentbus.names import check_token
from agentbus.service import MicroService, ServiceMetrics, report_bad_message
from agentbus_supervisor.docker_runtime import DockerRuntime
from agentbus_supervisor.process_runtime import ProcessRuntime
from agentbus_supervisor.replica import ReplicaRunner, RunnerContext, SupervisorMetrics
from agentbus_supervisor.runtime import ReplicaHandle, ReplicaSpec, Runtime, build_spec
from agentbus_supervisor.settings import SupervisorSettings

SERVICE = "supervisor"
ReplicaKey = tuple[str, int]
_decode_deployment = msgspec.json.Decoder(Deployment).decode
_decode_placement = msgspec.json.Decoder(Placement).decode


async def make_runtime(settings: SupervisorSettings, prefix: str) -> Runtime:
    """The runtime ``settings.runtime`` asks for (``auto``: docker if it answers).

    Raises:
        UnavailableError: ``docker`` was asked for and no engine answers.
    """
    if settings.runtime in ("docker", "auto"):
        try:
            return await DockerRuntime.connect(
                settings.docker_url,
                node_id=settings.node_id,
                prefix=prefix,
                network=settings.docker_network,
                memory_bytes=settings.docker_memory_bytes,
                nano_cpus=settings.docker_nano_cpus,
                pids_limit=settings.docker_pids_limit,
                read_only=settings.docker_read_only,
                extra_labels=settings.docker_labels,
            )
        except UnavailableError as exc:
            if settings.runtime == "docker":
                raise
            logger.info("no Docker engine; running replicas as processes", error=str(exc))
    return ProcessRuntime(
        queue_lines=settings.log_queue_lines,
        line_max_bytes=settings.log_line_max_bytes,
        close_grace_s=settings.stop_grace_s,
    )


class Supervisor:
    """Reconciles this node's placements with the replicas its runtime runs."""

    def __init__(
        self,
        bus: Bus,
        settings: SupervisorSettings,
        runtime: Runtime,
        registry: CollectorRegistry,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.runtime = runtime
        self.node_id = check_token("node id", settings.node_id)
        self.metrics = SupervisorMetrics(registry)
        self.service_metrics = ServiceMetrics(SERVICE, registry)
        self.ctx = RunnerContext(
            bus=bus,
            runtime=runtime,
            node_id=self.node_id,
            metrics=self.metrics,
            healthy_uptime_s=settings.healthy_uptime_s,
            log_line_max_bytes=settings.log_line_max_bytes,
        )
        self.started_at = utcnow()
        self.deployments: dict[str, Deployment] = {}
        self.placements: dict[str, Placement] = {}
        self.runners: dict[ReplicaKey, ReplicaRunner] = {}
        self.adoptable: dict[ReplicaKey, ReplicaHandle] = {}
        self._dirty = asyncio.Event()
        self._beat = asyncio.Event()
        self._pending_stops: set[asyncio.Future[list[None]]] = set()

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
        )

    async def status(self, _: GetNodeStatus) -> NodeStatusReply:
        """Handler of ``<p>.supervisor.<node_id>.status``."""
        replicas = [self.runners[k].status() for k in sorted(self.runners)]
        return NodeStatusReply(node=self.node_info(), replicas=replicas)

    async def _heartbeat(self, kv: KeyValue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await kv.put(self.node_id, encode(self.node_info()))
            except Exception as exc:
                logger.warning("node heartbeat failed", error=repr(exc))
            # Sleep until the next beat, or until a reconcile changed the replica count.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), self.settings.heartbeat_s)
            self._beat.clear()

    # -- watching the fleet buckets -----------------------------------------------------
    async def _watch(
        self,
        bucket: str,
        source: str,
        apply: Callable[[str, bytes | None], None],
        ready: asyncio.Event,
    ) -> None:
        watcher = await (await self.bus.kv(bucket)).watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    ready.set()
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                try:
                    apply(entry.key, None if deleted else (entry.value or b""))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    await report_bad_message(
                        self.bus,
                        self.service_metrics,
                        source=source,
                        subject=f"$KV.{bucket}.{entry.key}",
                        reason=str(exc),
                    )
                    continue
                self._dirty.set()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply_deployment(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = _decode_deployment(value)

    def _apply_placement(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.placements.pop(key, None)
        else:
            self.placements[key] = _decode_placement(value)

    # -- reconciling --------------------------------------------------------------------
    def desired(self) -> dict[ReplicaKey, Deployment]:
        """Replicas placed on this node whose deployment exists, with that deployment."""
        wanted: dict[ReplicaKey, Deployment] = {}
        for p in self.placements.values():
            if p.node_id == self.node_id and (dep := self.deployments.get(p.deployment)):
                wanted[(p.deployment, p.replica)] = dep
        return wanted

    def _spec(self, deployment: Deployment, replica: int) -> ReplicaSpec:
        return build_spec(
            deployment,
            replica,
            node_id=self.node_id,
            prefix=self.bus.names.prefix,
            nats_url=self.settings.agent_nats_url or self.bus.settings.nats_url,
            runtime=self.runtime.kind,
            default_image=self.settings.docker_default_image,
        )

    async def reconcile(self) -> None:
        """Start, stop and replace replicas until they match ``desired()``."""
        wanted = self.desired()
        grace_s = self.settings.stop_grace_s
        stopping: list[ReplicaRunner] = []
        for key, runner in list(self.runners.items()):
            dep = wanted.get(key)
            if dep is None:
                stopping.append(self.runners.pop(key))
            elif self._spec(dep, key[1]) != runner.spec:
                logger.info("replica spec changed; replacing", agent_id=runner.spec.agent_id)
                stopping.append(self.runners.pop(key))
            else:
                runner.deployment = dep
        leftovers = [h for k, h in self.adoptable.items() if k not in wanted]
        self.adoptable = {k: h for k, h in self.adoptable.items() if k in wanted}
        # Shielded and tracked: a supervisor stopping mid-reconcile still finishes
        # these stops (container removal included) in shutdown().
        stops = asyncio.ensure_future(
            asyncio.gather(
                *(r.stop(grace_s) for r in stopping),
                *(self._stop_handle(h, grace_s) for h in leftovers),
            )
        )
        self._pending_stops.add(stops)
        stops.add_done_callback(self._pending_stops.discard)
        await asyncio.shield(stops)
        for key, dep in sorted(wanted.items()):
            if key in self.runners:
                continue
            if len(self.runners) >= self.settings.capacity_replicas:
                logger.warning("node at capacity; replica not started", replica=key)
                break
            spec = self._spec(dep, key[1])
            adopted = self.adoptable.pop(key, None)
            if adopted is not None and not (adopted.running and adopted.digest == spec.digest):
                await self._stop_handle(adopted, grace_s)
                adopted = None
            runner = ReplicaRunner(self.ctx, spec, dep, adopted=adopted)
            self.runners[key] = runner
            runner.start()
        self.metrics.replicas.set(len(self.runners))
        self._beat.set()

    async def _stop_handle(self, handle: ReplicaHandle, grace_s: float) -> None:
        logger.info("stopping replica not placed here", name=handle.name)
        try:
            await self.runtime.stop(handle, grace_s)
        except AgentBusError as exc:
            logger.warning("replica stop failed", name=handle.name, error=str(exc))

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
            own = await self.runtime.list_own()
        except AgentBusError as exc:
            logger.warning("cannot list existing replicas", error=str(exc))
            own = []
        self.adoptable = {(h.deployment, h.replica): h for h in own}
        nodes_kv = await self.bus.kv(names.nodes_bucket)
        micro = MicroService(self.bus, SERVICE, self.service_metrics)
        await micro.start()
        await micro.endpoint(
            "status", GetNodeStatus, self.status, subject=self.status_subject(names.prefix)
        )
        ready_d, ready_p = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(self._heartbeat(nodes_kv, stop)),
            asyncio.create_task(
                self._watch(
                    names.deployments_bucket,
                    "deployments",
                    self._apply_deployment,
                    ready_d,
                )
            ),
            asyncio.create_task(
                self._watch(
                    names.placements_bucket,
                    "placements",
                    self._apply_placement,
                    ready_p,
                )
            ),
        ]
        logger.info("supervisor started", node_id=self.node_id, runtime=self.runtime.kind)
        try:
            await ready_d.wait()
            await ready_p.wait()
            self._dirty.set()  # first pass also settles adoptable leftovers
            tasks.append(asyncio.create_task(self._reconcile_loop()))
            await stop.wait()
        finally:
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
        await asyncio.gather(*self._pending_stops, return_exceptions=True)
        if self.settings.stop_replicas_on_exit or self.runtime.kind == "process":
            await asyncio.gather(
                *(r.stop(self.settings.stop_grace_s, reason="supervisor stopped") for r in runners)
            )
        else:
            await asyncio.gather(*(r.detach() for r in runners))
        self.metrics.replicas.set(0)


async def serve(
    bus: Bus, stop: asyncio.Event, settings: SupervisorSettings, registry: CollectorRegistry
) -> None:
    """Run this node's supervisor until ``stop`` is set, then clean up.

    Raises:
        UnavailableError: ``settings.runtime`` is ``docker`` and no engine answers.
        ContractError: ``settings.node_id`` is not a valid token.
    """
    check_token("node id", settings.node_id)
    runtime = await make_runtime(settings, bus.names.prefix)
    try:
        await Supervisor(bus, settings, runtime, registry).run(stop)
    finally:
        await runtime.close()
