"""What a runtime (Docker containers or local processes) does for the supervisor.

A runtime starts one replica from a ``ReplicaSpec``, waits for it to exit, stops it
gracefully (SIGTERM, then SIGKILL after a grace period), runs a command inside it
(health checks), streams its output lines (with stream and timestamp) and, where it
can, lists the replicas it left running before a supervisor restart (adoption).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agentbus.errors import UnavailableError
from agentbus.messages import Deployment
from agentbus.messages.fleet import Limits
from agentbus.names import replica_agent_id

CREDS_FILE_NAME = "agent.creds"
"""Name of a replica's creds file, in a directory of its own."""
CONTAINER_CREDS_DIR = "/run/agentbus/creds"
"""Where an agent container finds its creds directory, bind-mounted read-only: the
directory, not the file, so that a renewed file (replaced by rename) shows through."""
CONTAINER_CREDS_PATH = f"{CONTAINER_CREDS_DIR}/{CREDS_FILE_NAME}"
"""Where an agent container finds its creds file."""

LABEL_MANAGED = "agentbus.managed"
LABEL_NODE = "agentbus.node"
LABEL_PREFIX = "agentbus.prefix"
LABEL_DEPLOYMENT = "agentbus.deployment"
LABEL_REPLICA = "agentbus.replica"
LABEL_AGENT_ID = "agentbus.agent_id"
LABEL_SPEC = "agentbus.spec"
"""Digest of image, command, env and limits: an adopted replica must match its spec."""
NO_LIMITS = Limits()
STOP_RETURN_MARGIN_S = 2.0
"""Of a deployment's ``stop_grace_s``, at most this much (half of short graces) is kept
for the agent to return its unfinished tasks and leave the registry: the agent's own
grace (``AGENTBUS_AGENT_STOP_GRACE_S``) is the rest, so SIGKILL never comes first."""


def agent_stop_grace_s(stop_grace_s: float) -> float:
    """The agent's in-flight grace inside a replica stop grace of ``stop_grace_s`` s."""
    return max(stop_grace_s - min(STOP_RETURN_MARGIN_S, stop_grace_s / 2), 0.1)


@dataclass(frozen=True, eq=True)
class ReplicaSpec:
    """Everything needed to start one replica.

    Attributes:
        deployment: the deployment name.
        replica: the replica index within the deployment.
        agent_id: ``<deployment>-<replica>`` (``agentbus.names.replica_agent_id``).
        image: the container image (docker runtime).
        command: argv (process runtime; the container command for docker).
        env: the complete agent environment (deployment env, opened secrets and
            ``AGENTBUS_*``); left out of ``repr`` as it holds secrets.
        labels: ``agentbus.*`` labels identifying node, prefix and replica.
        limits: memory/CPU/PID limits in effect (the deployment's, else the node's).
        secrets_failure: ``(cause, message)`` when a secret did not open: the replica
            must not start (``env`` then lacks every secret).
    """

    deployment: str
    replica: int
    agent_id: str
    image: str | None
    command: tuple[str, ...] | None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)
    limits: Limits = NO_LIMITS
    creds_file: str | None = None
    """Host path of the replica's creds file: its directory is bind-mounted read-only at
    ``CONTAINER_CREDS_DIR`` (docker), or the file is named by ``AGENTBUS_CREDS_FILE``
    (process)."""
    secrets_failure: tuple[str, str] | None = None

    @property
    def digest(self) -> str:
        """Short SHA-256 of what the replica runs (image, command, env, limits)."""
        limits = [self.limits.memory_bytes, self.limits.cpus, self.limits.pids]
        body = json.dumps([self.image, self.command, sorted(self.env.items()), limits])
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class ReplicaHandle:
    """A running (or exited) replica as a runtime knows it.

    Attributes:
        runtime_id: container id, or the pid as a string.
        name: container name, or the agent id for processes.
        deployment: deployment name.
        replica: replica index.
        agent_id: the agent id it runs as.
        digest: ``ReplicaSpec.digest`` of the spec it was started from.
        running: whether it was running when the handle was made.
        started_at: when it started, if known.
        adopted: found by ``list_own`` rather than started by this supervisor.
    """

    runtime_id: str
    name: str
    deployment: str
    replica: int
    agent_id: str
    digest: str = ""
    running: bool = True
    started_at: datetime | None = None
    adopted: bool = False
    spare_id: str = ""
    """The warm spare this instance was started as (``warm_pool``); empty: started cold."""


@dataclass(frozen=True)
class OutputLine:
    """One line a replica wrote.

    Attributes:
        stream: ``stdout`` or ``stderr``.
        at: when the runtime read it (Docker: the engine's own timestamp), UTC.
        text: the line without its newline.
    """

    stream: Literal["stdout", "stderr"]
    at: datetime
    text: str


@dataclass(frozen=True)
class ExecResult:
    """How a command run inside a replica ended (health checks).

    Attributes:
        exit_code: its exit status; None when it timed out or could not run.
        output: the end of its output (at most a few hundred characters).
    """

    exit_code: int | None
    output: str = ""


@dataclass(frozen=True)
class ExitInfo:
    """How a replica ended.

    Attributes:
        exit_code: the exit status (128 + n after signal n), None if unknown.
        oom_killed: the kernel OOM killer ended it.
        reason: one line for events and logs.
    """

    exit_code: int | None
    oom_killed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Usage:
    """One measurement of a replica.

    Attributes:
        cpu_cores: CPU in use, in cores (0.5: half of one core), averaged over the
            interval the runtime measured; None when unknown (a process's first sample).
        memory_bytes: resident memory, page cache excluded; None when unknown.
    """

    cpu_cores: float | None
    memory_bytes: int | None


Progress = Callable[[str], Awaitable[None]]
"""Receives one line of progress (an image pull's) at a time."""


class ImagePullError(UnavailableError):
    """Image ``image`` could not be pulled: ``reason`` is the engine's or registry's."""

    def __init__(self, image: str, reason: str) -> None:
        self.image, self.reason = image, reason
        super().__init__(f"cannot pull image {image!r}: {reason}")


class Runtime(ABC):
    """Starts, stops and watches replicas on this node."""

    kind: Literal["docker", "process"]

    async def images(self) -> list[str]:
        """Image references the runtime has locally (none by default).

        Raises:
            UnavailableError: the runtime failed to list them.
        """
        return []

    async def prepare(self, spec: ReplicaSpec, progress: Progress) -> None:  # noqa: B027
        """Make what ``spec`` needs present (an image), reporting to ``progress``.

        Nothing to do by default.

        Raises:
            ImagePullError: the image is missing and could not be pulled.
            UnavailableError: the runtime failed otherwise.
        """

    @abstractmethod
    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start a replica (replacing an exited one of the same name).

        Raises:
            ContractError: the spec cannot run here (no image / no command / bad image).
            UnavailableError: the runtime failed to start it.
        """

    @abstractmethod
    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """SIGTERM, SIGKILL after ``grace_s`` seconds, then forget or remove it."""

    @abstractmethod
    async def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL the replica at once (it stays known until ``stop``)."""

    @abstractmethod
    async def wait(self, handle: ReplicaHandle) -> ExitInfo:
        """Block until the replica has exited and tell how."""

    @abstractmethod
    def logs(self, handle: ReplicaHandle) -> AsyncIterator[OutputLine]:
        """Output lines (stdout and stderr) from now until the replica exits."""

    @abstractmethod
    async def exec(self, handle: ReplicaHandle, command: list[str], timeout_s: float) -> ExecResult:
        """Run ``command`` inside the replica (its user, env and namespaces).

        A command still running after ``timeout_s`` seconds gives ``exit_code`` None.

        Raises:
            UnavailableError: the runtime could not run it (engine error, replica gone).
        """

    async def usage(self, handle: ReplicaHandle) -> Usage | None:
        """CPU and memory the running replica uses now (None: not measured here).

        Raises:
            UnavailableError: the runtime could not measure it (replica gone, engine error).
        """
        return None

    @abstractmethod
    async def list_own(self) -> list[ReplicaHandle]:
        """Replicas of this node and prefix that already exist (for adoption)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the runtime's resources."""


def build_spec(
    deployment: Deployment,
    replica: int,
    *,
    node_id: str,
    prefix: str,
    nats_url: str,
    runtime: str,
    default_image: str | None = None,
    default_limits: Limits = NO_LIMITS,
    creds_file: str | None = None,
    bus_env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, str] | None = None,
    secrets_failure: tuple[str, str] | None = None,
) -> ReplicaSpec:
    """The ``ReplicaSpec`` of replica ``replica`` of ``deployment`` on this node.

    The environment is the deployment's ``env`` and ``secret_env`` (the opened
    values, by name; ``secrets_failure`` says why they did not open) overlaid with
    ``bus_env`` (how to reach the bus besides the URL: the ``AGENTBUS_TLS_*`` files)
    and the agent settings
    (``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX`` and ``AGENTBUS_AGENT_*``, including
    ``AGENTBUS_AGENT_STOP_GRACE_S`` from ``agent_stop_grace_s``). On a ``docker`` node
    the container runs ``image_command`` (or the image's CMD); with no image it runs
    ``command`` in ``default_image``. On a ``process`` node it runs ``command``. Each
    limit the deployment leaves unset comes from ``default_limits`` (the node's).
    """
    agent_id = replica_agent_id(deployment.name, replica)
    env = {**deployment.env, **(secret_env or {})}
    env.update(bus_env or {})
    env.update(
        {
            "AGENTBUS_NATS_URL": nats_url,
            "AGENTBUS_PREFIX": prefix,
            "AGENTBUS_AGENT_ID": agent_id,
            "AGENTBUS_AGENT_NODE_ID": node_id,
            "AGENTBUS_AGENT_DEPLOYMENT": deployment.name,
            "AGENTBUS_AGENT_REPLICA": str(replica),
            "AGENTBUS_AGENT_MAX_CONCURRENCY": str(deployment.max_concurrency),
        }
    )
    if deployment.stop_grace_s > 0:
        env["AGENTBUS_AGENT_STOP_GRACE_S"] = f"{agent_stop_grace_s(deployment.stop_grace_s):g}"
    if deployment.capabilities:
        env["AGENTBUS_AGENT_CAPABILITIES"] = ",".join(deployment.capabilities)
    if creds_file is not None:  # the path only: the file reaches the agent as a file
        in_container = runtime != "process"
        env["AGENTBUS_CREDS_FILE"] = CONTAINER_CREDS_PATH if in_container else creds_file
    if runtime == "docker" and deployment.image:
        command = deployment.image_command
    else:
        command = deployment.command
    spec = ReplicaSpec(
        deployment=deployment.name,
        replica=replica,
        agent_id=agent_id,
        image=deployment.image or default_image,
        command=tuple(command) if command else None,
        env=env,
        creds_file=creds_file,
        secrets_failure=secrets_failure,
        limits=Limits(
            memory_bytes=deployment.limits.memory_bytes or default_limits.memory_bytes,
            cpus=deployment.limits.cpus or default_limits.cpus,
            pids=deployment.limits.pids or default_limits.pids,
        ),
    )
    labels = {
        LABEL_MANAGED: "1",
        LABEL_NODE: node_id,
        LABEL_PREFIX: prefix,
        LABEL_DEPLOYMENT: deployment.name,
        LABEL_REPLICA: str(replica),
        LABEL_AGENT_ID: agent_id,
        LABEL_SPEC: spec.digest,
    }
    return dataclasses.replace(spec, labels=labels)
