"""What a runtime (Docker containers or local processes) does for the supervisor.

A runtime starts one replica from a ``ReplicaSpec``, waits for it to exit, stops it
gracefully (SIGTERM, then SIGKILL after a grace period), streams its output lines
and, where it can, lists the replicas it left running before a supervisor restart
(adoption).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agentbus.messages import Deployment

LABEL_MANAGED = "agentbus.managed"
LABEL_NODE = "agentbus.node"
LABEL_PREFIX = "agentbus.prefix"
LABEL_DEPLOYMENT = "agentbus.deployment"
LABEL_REPLICA = "agentbus.replica"
LABEL_AGENT_ID = "agentbus.agent_id"
LABEL_SPEC = "agentbus.spec"
"""Digest of image, command and env: an adopted replica must match its current spec."""


@dataclass(frozen=True, eq=True)
class ReplicaSpec:
    """Everything needed to start one replica.

    Attributes:
        deployment: the deployment name.
        replica: the replica index within the deployment.
        agent_id: ``<deployment>-<replica>``.
        image: the container image (docker runtime).
        command: argv (process runtime; the container command for docker).
        env: the complete agent environment (deployment env + ``AGENTBUS_*``).
        labels: ``agentbus.*`` labels identifying node, prefix and replica.
    """

    deployment: str
    replica: int
    agent_id: str
    image: str | None
    command: tuple[str, ...] | None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Short SHA-256 of what the replica runs (image, command, env)."""
        body = json.dumps([self.image, self.command, sorted(self.env.items())])
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


class Runtime(ABC):
    """Starts, stops and watches replicas on this node."""

    kind: Literal["docker", "process"]

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
    def logs(self, handle: ReplicaHandle) -> AsyncIterator[str]:
        """Output lines (stdout and stderr) from now until the replica exits."""

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
) -> ReplicaSpec:
    """The ``ReplicaSpec`` of replica ``replica`` of ``deployment`` on this node.

    The environment is the deployment's ``env`` overlaid with the agent settings
    (``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX`` and ``AGENTBUS_AGENT_*``). On a
    ``docker`` node the container runs ``image_command`` (or the image's CMD); with no
    image it runs ``command`` in ``default_image``. On a ``process`` node it runs
    ``command``.
    """
    agent_id = f"{deployment.name}-{replica}"
    env = dict(deployment.env)
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
    if deployment.capabilities:
        env["AGENTBUS_AGENT_CAPABILITIES"] = ",".join(deployment.capabilities)
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
