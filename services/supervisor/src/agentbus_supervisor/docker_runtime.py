"""Replicas as Docker containers, through the Docker Engine API (aiodocker).

Containers are named ``<prefix>-<node_id>-<deployment>-<replica>`` and carry the
labels ``agentbus.managed=1``, ``agentbus.node``, ``agentbus.prefix``,
``agentbus.deployment``, ``agentbus.replica``, ``agentbus.agent_id`` and
``agentbus.spec``. The runtime lists and touches only containers carrying its own
node and prefix labels. They run unprivileged: a non-root user (the image's own
``USER`` unless that is root, else ``65534:65534``, "nobody"), every capability
dropped, ``no-new-privileges``, no mounts (so no Docker socket), an init process (so
SIGTERM reaches the agent; off by default on Podman, whose Docker-compatible API looks
for ``catatonit`` at a fixed path and ignores ``init_path``), and the memory (swap
included), CPU (``NanoCpus``) and PID limits of the ``ReplicaSpec``.

The same code drives Podman through its Docker-compatible API socket
(``podman system service``); see docs/operations.md, "Podman".

A missing image is pulled first (``prepare``; a failed pull is an
``ImagePullError``). ``usage`` reads the engine's one-shot container stats
(``usage``). ``aiodocker.DockerError`` never leaves this module: a missing
image at create time becomes a ``ContractError``, anything else an
``UnavailableError``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any, Literal

import aiodocker
import aiohttp
from loguru import logger

from agentbus.errors import ConflictError, ContractError, UnavailableError
from agentbus.messages import utcnow
from agentbus_supervisor._docker_pull import Puller
from agentbus_supervisor._docker_stream import LogFrameDecoder, parse_docker_time
from agentbus_supervisor.runtime import (
    CONTAINER_CREDS_DIR,
    LABEL_AGENT_ID,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_PREFIX,
    LABEL_REPLICA,
    LABEL_SPEC,
    ExecResult,
    ExitInfo,
    OutputLine,
    Progress,
    ReplicaHandle,
    ReplicaSpec,
    Runtime,
    Usage,
)
from agentbus_supervisor.usage import docker_cpu_cores, docker_memory_bytes


class _NameInUseError(Exception):
    """The engine refused a create: a container already has the name."""


NOBODY = "65534:65534"
"""The user of containers whose image runs as root (or names no user)."""
_EXEC_OUTPUT_CHARS = 400
MAX_IMAGES = 500
"""Image tags a node reports in its ``NodeInfo`` at most."""
_ROOT_USERS = ("", "root", "0")
_STATS_TIMEOUT_S = 10.0
"""Bound of one ``stats`` call (the engine takes about a second to sample twice)."""


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
        read_only: bool = False,
        user: str | None = None,
        extra_labels: dict[str, str] | None = None,
        log_line_max_bytes: int = 8192,
        engine: Literal["docker", "podman"] = "docker",
        init: bool | None = None,
    ) -> None:
        self._docker = docker
        self.engine = engine
        self.init = (engine == "docker") if init is None else init
        self.node_id = node_id
        self.prefix = prefix
        self.network = network
        self.read_only = read_only
        self.user = user
        self.extra_labels = dict(extra_labels or {})
        self.log_line_max_bytes = log_line_max_bytes
        self._image_users: dict[str, str] = {}
        self._puller = Puller(docker)
        # Each replica holds two long requests (wait and logs): lift aiohttp's cap of 100.
        connector: Any = docker.connector
        if hasattr(connector, "_limit"):
            connector._limit = 0

    @classmethod
    async def connect(
        cls, url: str | None = None, *, timeout_s: float = 10.0, **kwargs: Any
    ) -> DockerRuntime:
        """Connect to the engine at ``url``, check that it answers, tell Docker from Podman.

        Podman's API answers ``/version`` with a ``Podman Engine`` component; the
        runtime then defaults ``init`` to off (see docs/operations.md, "Podman").

        Raises:
            UnavailableError: no engine answered within ``timeout_s`` seconds.
        """
        try:
            docker = aiodocker.Docker(url=url)
        except (ValueError, OSError) as exc:
            raise UnavailableError(f"no Docker engine found: {exc}") from exc
        try:
            version = await asyncio.wait_for(docker.version(), timeout_s)
        except Exception as exc:  # any failure means: no usable engine
            await docker.close()
            raise UnavailableError(f"Docker engine at {docker.docker_host} not answering") from exc
        components = version.get("Components") or []
        podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
        kwargs.setdefault("engine", "podman" if podman else "docker")
        return cls(docker, **kwargs)

    async def prepare(self, spec: ReplicaSpec, progress: Progress) -> None:
        """Pull the spec's image unless the engine has it (``_docker_pull``).

        Raises:
            ImagePullError: the image is missing and could not be pulled.
            UnavailableError: the engine failed otherwise.
        """
        if spec.image:
            await self._puller.ensure(spec.image, progress)

    async def images(self) -> list[str]:
        """The engine's image tags (``repo:tag``), sorted, at most ``MAX_IMAGES``.

        Raises:
            UnavailableError: the engine failed to list them.
        """
        try:
            found = await self._docker.images.list()
        except aiodocker.DockerError as exc:
            raise UnavailableError(f"cannot list images: {exc.message}") from exc
        tags = {t for i in found for t in i.get("RepoTags") or [] if t != "<none>:<none>"}
        return sorted(tags)[:MAX_IMAGES]

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

    async def _user_for(self, image: str) -> str:
        """``user`` if set, else the image's ``USER`` unless it is root, else ``NOBODY``."""
        if self.user is not None:
            return self.user
        if (cached := self._image_users.get(image)) is not None:
            return cached
        try:
            info = await self._docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContractError(f"image {image!r} not found: {exc.message}") from exc
            raise UnavailableError(f"cannot inspect image {image!r}: {exc.message}") from exc
        own = (info.get("Config") or {}).get("User") or ""
        user = NOBODY if own.split(":")[0] in _ROOT_USERS else own
        self._image_users[image] = user
        return user

    def _config(self, spec: ReplicaSpec, user: str) -> dict[str, Any]:
        host: dict[str, Any] = {
            "NetworkMode": self.network,
            "Privileged": False,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Init": self.init,
            "ReadonlyRootfs": self.read_only,
            "RestartPolicy": {"Name": "no"},
        }
        limits = spec.limits
        if limits.memory_bytes:
            host["Memory"] = limits.memory_bytes
            host["MemorySwap"] = limits.memory_bytes  # no swap beyond the limit
        if limits.cpus:
            host["NanoCpus"] = int(limits.cpus * 1e9)
        if limits.pids:
            host["PidsLimit"] = limits.pids
        if spec.creds_file is not None:
            folder = str(PurePosixPath(spec.creds_file).parent)
            host["Binds"] = [f"{folder}:{CONTAINER_CREDS_DIR}:ro"]
        config: dict[str, Any] = {
            "Image": spec.image,
            "User": user,
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
            started_at = parse_docker_time(state.get("StartedAt"))
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

        Two engine calls when the name is free (create, start): restarts are on the
        recovery path. An earlier container of that name (the engine answers 409) is
        removed first if it is ours, then the create is repeated.

        Raises:
            ContractError: no image given, the image is not present locally, or the
                container cannot start its command.
            ConflictError: a foreign container already has the name.
            UnavailableError: the engine failed otherwise.
        """
        if not spec.image:
            raise ContractError(f"deployment {spec.deployment!r} has no image for docker")
        name = self.container_name(spec.deployment, spec.replica)
        if spec.replica < 0:  # a warm spare: named by its own id
            name = f"{self.prefix}-{self.node_id}-{spec.agent_id}"
        config = self._config(spec, await self._user_for(spec.image))
        try:
            container = await self._create(config, name)
        except _NameInUseError:
            await self._remove_previous(name)
            container = await self._create(config, name)
        try:
            await container.start()
        except aiodocker.DockerError as exc:
            try:
                await container.delete(force=True)
            except aiodocker.DockerError:
                logger.warning("could not remove failed container", container=name)
            if exc.status in (400, 404) or "executable file not found" in exc.message:
                raise ContractError(f"container {name} cannot start: {exc.message}") from exc
            raise UnavailableError(f"cannot start container {name}: {exc.message}") from exc
        return ReplicaHandle(
            runtime_id=container.id,
            name=name,
            deployment=spec.deployment,
            replica=spec.replica,
            agent_id=spec.agent_id,
            digest=spec.labels.get(LABEL_SPEC, spec.digest),
            started_at=utcnow(),
        )

    async def _create(self, config: dict[str, Any], name: str) -> aiodocker.docker.DockerContainer:
        try:
            return await self._docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 409 or "already in use" in exc.message:
                raise _NameInUseError(name) from exc
            if exc.status == 404:
                raise ContractError(f"image {config['Image']!r} not found: {exc.message}") from exc
            raise UnavailableError(f"cannot create container {name}: {exc.message}") from exc

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """``docker stop -t grace`` (SIGTERM, then SIGKILL), then remove the container.

        With ``grace_s`` 0 (an ended instance, before its restart) only the forced
        remove, which kills a container still running.

        Raises:
            UnavailableError: the engine failed (a missing container is fine).
        """
        container = self._docker.containers.container(handle.runtime_id)
        if grace_s > 0:
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

    async def logs(self, handle: ReplicaHandle) -> AsyncIterator[OutputLine]:
        """Output lines of the container with their stream and the engine's timestamp.

        Follows until the container stops; an adopted container yields only lines
        written from now on. Reads the raw multiplexed stream (``_docker_stream``)
        because aiodocker's ``log()`` drops which stream a line came from.
        """
        params = {"stdout": "1", "stderr": "1", "follow": "1", "timestamps": "1"}
        if handle.adopted:
            params["since"] = str(int(time.time()))
        decoder = LogFrameDecoder(max_line_bytes=self.log_line_max_bytes)
        try:
            async with self._docker._query(
                f"containers/{handle.runtime_id}/logs",
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            ) as response:
                async for chunk in response.content.iter_any():
                    for line in decoder.feed(chunk):
                        yield line
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                logger.warning("log stream failed", container=handle.name, error=exc.message)
        except aiohttp.ClientError as exc:
            logger.warning("log stream ended", container=handle.name, error=repr(exc))
        for line in decoder.flush():
            yield line

    async def exec(self, handle: ReplicaHandle, command: list[str], timeout_s: float) -> ExecResult:
        """``docker exec`` ``command`` in the container; its exit code and output tail.

        Docker cannot kill an exec'd process: one that outlives ``timeout_s`` is
        reported as failed (``exit_code`` None) and left to end by itself (the PID
        limit bounds how many can pile up).

        Raises:
            UnavailableError: the engine refused (e.g. the container is not running).
        """
        container = self._docker.containers.container(handle.runtime_id)
        output = bytearray()
        try:
            async with asyncio.timeout(timeout_s):
                execution = await container.exec(command, stdout=True, stderr=True)
                async with execution.start(detach=False) as stream:
                    while (msg := await stream.read_out()) is not None:
                        output += msg.data
                        del output[: max(0, len(output) - _EXEC_OUTPUT_CHARS)]
                info = await execution.inspect()
        except TimeoutError:
            return ExecResult(exit_code=None, output=f"timed out after {timeout_s:g} s")
        except (aiodocker.DockerError, aiohttp.ClientError) as exc:
            message = exc.message if isinstance(exc, aiodocker.DockerError) else repr(exc)
            raise UnavailableError(f"cannot exec in {handle.name}: {message}") from exc
        text = output.decode("utf-8", "replace").strip()
        return ExecResult(exit_code=info.get("ExitCode"), output=text)

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

    async def usage(self, handle: ReplicaHandle) -> Usage:
        """One ``stats`` answer of the container: its cores and memory (``usage``).

        CPU is averaged over the engine's own interval of about a second.

        Raises:
            UnavailableError: the engine failed or did not answer in time.
        """
        container = self._docker.containers.container(handle.runtime_id)
        try:
            answers = await container.stats(stream=False, timeout=_STATS_TIMEOUT_S)
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, aiodocker.DockerError) else repr(exc)
            raise UnavailableError(f"cannot read stats of {handle.name}: {message}") from exc
        stats = answers[-1] if answers else {}
        return Usage(cpu_cores=docker_cpu_cores(stats), memory_bytes=docker_memory_bytes(stats))

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
