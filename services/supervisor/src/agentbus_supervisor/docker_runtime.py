"""Replicas as Docker containers, through the Docker Engine API (aiodocker).

Containers are named ``<prefix>-<node_id>-<deployment>-<replica>`` and carry the
labels ``agentbus.managed=1``, ``agentbus.node``, ``agentbus.prefix``,
``agentbus.deployment``, ``agentbus.replica``, ``agentbus.agent_id`` and
``agentbus.spec``. The runtime lists and touches only containers carrying its own
node and prefix labels. They run with every capability dropped, ``no-new-privileges``,
an init process (so SIGTERM reaches the agent), and memory, CPU and PID limits.

``aiodocker.DockerError`` never leaves this module: a missing image becomes a
``ContractError``, anything else an ``UnavailableError``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import aiodocker
from aiodocker.containers import DockerContainer
from loguru import logger

from agentbus.errors import ConflictError, ContractError, UnavailableError
from agentbus_supervisor.runtime import (
    LABEL_AGENT_ID,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_PREFIX,
    LABEL_REPLICA,
    LABEL_SPEC,
    ExitInfo,
    ReplicaHandle,
    ReplicaSpec,
    Runtime,
)


def _parse_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 nanosecond timestamps, cut to microseconds."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    except ValueError:
        return None


class DockerRuntime(Runtime):
    """Runs replicas as containers on the local Docker (or Podman) engine."""

    kind: Literal["docker", "process"] = "docker"

    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        node_id: str,
        prefix: str,
        network: str = "host",
        memory_bytes: int = 512 * 1024 * 1024,
        nano_cpus: int = 1_000_000_000,
        pids_limit: int = 256,
        read_only: bool = False,
        extra_labels: dict[str, str] | None = None,
    ) -> None:
        self._docker = docker
        self.node_id = node_id
        self.prefix = prefix
        self.network = network
        self.memory_bytes = memory_bytes
        self.nano_cpus = nano_cpus
        self.pids_limit = pids_limit
        self.read_only = read_only
        self.extra_labels = dict(extra_labels or {})
        # Each replica holds two long requests (wait and logs): lift aiohttp's cap of 100.
        connector: Any = docker.connector
        if hasattr(connector, "_limit"):
            connector._limit = 0

    @classmethod
    async def connect(
        cls, url: str | None = None, *, timeout_s: float = 3.0, **kwargs: Any
    ) -> DockerRuntime:
        """Connect to the engine at ``url`` and check that it answers.

        Raises:
            UnavailableError: no engine answered within ``timeout_s`` seconds.
        """
        try:
            docker = aiodocker.Docker(url=url)
        except (ValueError, OSError) as exc:
            raise UnavailableError(f"no Docker engine found: {exc}") from exc
        try:
            await asyncio.wait_for(docker.version(), timeout_s)
        except Exception as exc:  # any failure means: no usable engine
            await docker.close()
            raise UnavailableError(f"Docker engine at {docker.docker_host} not answering") from exc
        return cls(docker, **kwargs)

    def container_name(self, deployment: str, replica: int) -> str:
        """``<prefix>-<node_id>-<deployment>-<replica>`` (unique per fleet and node)."""
        return f"{self.prefix}-{self.node_id}-{deployment}-{replica}"

    def _is_mine(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return (
            labels.get(LABEL_MANAGED) == "1"
            and labels.get(LABEL_NODE) == self.node_id
            and labels.get(LABEL_PREFIX) == self.prefix
        )

    def _config(self, spec: ReplicaSpec) -> dict[str, Any]:
        host: dict[str, Any] = {
            "NetworkMode": self.network,
            "Privileged": False,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "PidsLimit": self.pids_limit,
            "Memory": self.memory_bytes,
            "MemorySwap": self.memory_bytes,
            "Init": True,
            "ReadonlyRootfs": self.read_only,
            "RestartPolicy": {"Name": "no"},
        }
        if self.nano_cpus:
            host["NanoCpus"] = self.nano_cpus
        config: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
            "Labels": {**self.extra_labels, **spec.labels},
            "HostConfig": host,
            "StopSignal": "SIGTERM",
        }
        if spec.command:
            config["Cmd"] = list(spec.command)
        return config

    def _handle(self, info: dict[str, Any], *, adopted: bool = False) -> ReplicaHandle:
        labels: dict[str, str] = info.get("Config", {}).get("Labels") or info.get("Labels") or {}
        state = info.get("State")
        if isinstance(state, dict):
            running = bool(state.get("Running"))
            started_at = _parse_time(state.get("StartedAt"))
        else:  # the list endpoint gives State as a string
            running = state == "running"
            started_at = None
        name = info.get("Name") or (info.get("Names") or [""])[0]
        return ReplicaHandle(
            runtime_id=info.get("Id") or info["id"],
            name=name.lstrip("/"),
            deployment=labels.get(LABEL_DEPLOYMENT, ""),
            replica=int(labels.get(LABEL_REPLICA, "0")),
            agent_id=labels.get(LABEL_AGENT_ID, ""),
            digest=labels.get(LABEL_SPEC, ""),
            running=running,
            started_at=started_at,
            adopted=adopted,
        )

    async def _remove_previous(self, name: str) -> None:
        """Delete an earlier container of that name, if it is ours."""
        try:
            old = await self._docker.containers.get(name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            raise UnavailableError(f"cannot inspect container {name}: {exc.message}") from exc
        if not self._is_mine(old["Config"].get("Labels")):
            raise ConflictError(f"container {name} exists and is not managed by this node")
        try:
            await old.delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise UnavailableError(f"cannot remove container {name}: {exc.message}") from exc

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Create and start the replica's container.

        Raises:
            ContractError: no image given, the image is not present locally, or the
                container cannot start its command.
            ConflictError: a foreign container already has the name.
            UnavailableError: the engine failed otherwise.
        """
        if not spec.image:
            raise ContractError(f"deployment {spec.deployment!r} has no image for docker")
        name = self.container_name(spec.deployment, spec.replica)
        await self._remove_previous(name)
        try:
            container = await self._docker.containers.create(self._config(spec), name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContractError(f"image {spec.image!r} not found: {exc.message}") from exc
            raise UnavailableError(f"cannot create container {name}: {exc.message}") from exc
        try:
            await container.start()
            info = await container.show()
        except aiodocker.DockerError as exc:
            try:
                await container.delete(force=True)
            except aiodocker.DockerError:
                logger.warning("could not remove failed container", container=name)
            if exc.status in (400, 404) or "executable file not found" in exc.message:
                raise ContractError(f"container {name} cannot start: {exc.message}") from exc
            raise UnavailableError(f"cannot start container {name}: {exc.message}") from exc
        return self._handle(info)

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """``docker stop -t grace`` (SIGTERM, then SIGKILL), then remove the container.

        Raises:
            UnavailableError: the engine failed (a missing container is fine).
        """
        container = self._docker.containers.container(handle.runtime_id)
        try:
            await container.stop(t=max(0, math.ceil(grace_s)))
        except aiodocker.DockerError as exc:
            if exc.status not in (304, 404):
                raise UnavailableError(f"cannot stop {handle.name}: {exc.message}") from exc
        try:
            await container.delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # 409: removal already in progress
                raise UnavailableError(f"cannot remove {handle.name}: {exc.message}") from exc

    async def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL the container (it is removed by ``stop`` or the next ``start``).

        Raises:
            UnavailableError: the engine failed (a stopped container is fine).
        """
        try:
            await self._docker.containers.container(handle.runtime_id).kill()
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):
                raise UnavailableError(f"cannot kill {handle.name}: {exc.message}") from exc

    async def wait(self, handle: ReplicaHandle) -> ExitInfo:
        """Wait for the container to stop; exit code and OOM flag from ``inspect``.

        Raises:
            UnavailableError: the engine failed while waiting.
        """
        container = self._docker.containers.container(handle.runtime_id)
        try:
            result = await container.wait()
            info = await container.show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return ExitInfo(exit_code=None, reason="container removed")
            raise UnavailableError(f"cannot wait for {handle.name}: {exc.message}") from exc
        state = info.get("State", {})
        code = state.get("ExitCode", result.get("StatusCode"))
        oom = bool(state.get("OOMKilled"))
        reason = "oom-killed" if oom else f"exit code {code}"
        if state.get("Error"):
            reason = f"{reason}: {state['Error']}"
        return ExitInfo(exit_code=code, oom_killed=oom, reason=reason)

    async def logs(self, handle: ReplicaHandle) -> AsyncIterator[str]:
        """Output lines of the container (only new ones for an adopted container)."""
        container: DockerContainer = self._docker.containers.container(handle.runtime_id)
        since = int(time.time()) if handle.adopted else 0
        buffer = ""
        try:
            async for chunk in container.log(
                stdout=True, stderr=True, follow=True, since=since, timeout=None
            ):
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    yield line
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                logger.warning("log stream failed", container=handle.name, error=exc.message)
        if buffer:
            yield buffer

    async def list_own(self) -> list[ReplicaHandle]:
        """Containers (running or not) with this node's and prefix's labels.

        Raises:
            UnavailableError: the engine failed.
        """
        filters = {
            "label": [
                f"{LABEL_MANAGED}=1",
                f"{LABEL_NODE}={self.node_id}",
                f"{LABEL_PREFIX}={self.prefix}",
            ]
        }
        try:
            found = await self._docker.containers.list(all=True, filters=json.dumps(filters))
        except aiodocker.DockerError as exc:
            raise UnavailableError(f"cannot list containers: {exc.message}") from exc
        handles = []
        for container in found:
            raw = container._container
            if self._is_mine(raw.get("Labels")):
                handles.append(self._handle(raw, adopted=True))
        return handles

    async def inspect(self, handle: ReplicaHandle) -> dict[str, Any]:
        """The engine's ``inspect`` document of the replica's container (for tests, ops).

        Raises:
            UnavailableError: the engine failed or the container is gone.
        """
        try:
            return await self._docker.containers.container(handle.runtime_id).show()
        except aiodocker.DockerError as exc:
            raise UnavailableError(f"cannot inspect {handle.name}: {exc.message}") from exc

    async def close(self) -> None:
        """Close the engine connection (containers keep running, for adoption)."""
        await self._docker.close()
