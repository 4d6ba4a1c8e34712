"""Settings of the supervisor. Env: ``SUPERVISOR_*``.

Precedence: explicit keyword argument, then environment, then the default.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentbus_supervisor.fence import FenceTiming, check_timing


def default_node_id() -> str:
    """A subject-safe token derived from the hostname (``[a-z0-9][a-z0-9_-]*``)."""
    token = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-_")
    return (token or "node")[:64]


class SupervisorSettings(BaseSettings):
    """How one node's supervisor runs its replicas. Env: ``SUPERVISOR_*``."""

    model_config = SettingsConfigDict(env_prefix="SUPERVISOR_", frozen=True, extra="ignore")

    node_id: str = Field(default_factory=default_node_id)
    """This node's id: a token, unique in the fleet; placements name it."""
    runtime: Literal["docker", "podman", "process", "auto"] = "auto"
    """``docker``: the Docker Engine API at ``docker_url``; ``podman``: the same API
    served by ``podman system service`` (``docker_url`` defaults to Podman's socket);
    ``process``: local processes; ``auto``: docker if an engine answers, else processes."""
    labels: dict[str, str] = {}
    """Node labels for placement (JSON object in the environment)."""
    capacity_replicas: PositiveInt = 64
    """Replicas this node accepts; published in its ``NodeInfo``."""
    capacity_cpus: NonNegativeFloat = 0.0
    """CPUs that placed replicas may declare in total (``resources.cpus``); 0 = no limit."""
    capacity_memory_bytes: NonNegativeInt = 0
    """Memory placed replicas may declare in total (``resources.memory_bytes``); 0 = no limit."""
    start_limit: PositiveInt | None = None
    """Replicas of this node starting at once, from the engine call until the agent
    registered (``start_gate``); more wait in line. Default: 2 x the CPU count."""
    heartbeat_s: PositiveFloat = 2.0
    """Interval between ``NodeInfo`` puts into KV ``<p>_nodes``."""
    heartbeat_timeout_s: PositiveFloat | None = None
    """Bound of one heartbeat put (default: 0.75 x ``heartbeat_s``)."""
    fence_after_s: PositiveFloat | None = None
    """With no successful heartbeat put for longer than this, the supervisor fences
    itself: stops every replica, starts none until a put succeeds (``fence``). Must
    leave the replicas stopped strictly before the node entry can expire (the TTL,
    10 s; checked at load): after that, the scheduler starts them elsewhere. Default:
    the TTL less ``heartbeat_timeout_s``, the 1 s stop grace and max(``heartbeat_s``,
    1 s), i.e. 5.5 s with the default heartbeat."""
    images_refresh_s: PositiveFloat = 60.0
    """Interval between refreshes of the image list in ``NodeInfo.images``."""
    usage_sample_s: NonNegativeFloat = 5.0
    """Interval between measurements of each running replica's CPU and memory
    (``ReplicaStatus.cpu_cores``, ``memory_bytes``; ``usage``); 0 = not measured."""
    agent_nats_url: str | None = None
    """NATS URL given to agents (default: the supervisor's own URL)."""
    stop_grace_s: PositiveFloat = 10.0
    """SIGTERM-to-SIGKILL grace for replicas whose deployment is unknown (leftovers);
    placed replicas use their deployment's ``stop_grace_s``."""
    stop_replicas_on_exit: bool = True
    """Stop the replicas when the supervisor stops. Off (docker only): leave the
    containers running so that the next supervisor of this node adopts them."""
    adopt_grace_s: NonNegativeFloat = 30.0
    """After the supervisor starts, containers it adopted or found are kept this long
    while no placement names them, if their deployment still asks for them: after an
    outage of scheduler and supervisor together the node's entry is gone, so the
    scheduler unplaces its replicas and places them again once the node is back;
    within the grace they are adopted, not replaced. Longer than the node TTL (10 s)
    plus a placement pass."""
    docker_url: str | None = None
    """Engine API address, e.g. ``unix:///run/podman/podman.sock`` (default: for docker
    ``DOCKER_HOST`` or ``/var/run/docker.sock``; for podman ``$XDG_RUNTIME_DIR/podman/
    podman.sock`` when not root, else ``/run/podman/podman.sock``)."""
    docker_network: str = "host"
    """Network mode of agent containers: ``host``, or a network name (compose)."""
    docker_default_image: str | None = None
    """Image for deployments that give only a ``command`` (docker runtime)."""
    docker_memory_bytes: PositiveInt = 512 * 1024 * 1024
    """Memory limit of agent containers whose deployment sets no ``limits.memory_bytes``."""
    docker_nano_cpus: int = 1_000_000_000
    """CPU limit (1e-9 CPUs; 0 = unlimited) where the deployment sets no ``limits.cpus``."""
    docker_pids_limit: PositiveInt = 256
    """Process limit of agent containers whose deployment sets no ``limits.pids``."""
    docker_user: str | None = None
    """User of agent containers; default: the image's ``USER`` unless that is root, else
    ``65534:65534`` (nobody). Containers never run as root unless this says so."""
    docker_labels: dict[str, str] = {}
    """Extra labels on every agent container (JSON object in the environment)."""
    docker_init: bool | None = None
    """Run an init process as PID 1 of agent containers (``docker run --init``).
    Default: on for Docker, off for Podman (see docs/operations.md, "Podman")."""
    docker_read_only: bool = False
    """Run agent containers with a read-only root filesystem."""
    log_line_max_bytes: PositiveInt = 8192
    """Longer output lines are shipped in pieces of this size (``LogLine.line``)."""
    watch_check_s: PositiveFloat = 1.0
    """How often an idle KV watch checks whether NATS reconnected (then it re-watches)."""
    state_dir: Path | None = None
    """Where the process runtime keeps one pid file per replica, so that a restarted
    supervisor ends the replicas an earlier one left (``state_dir_for``)."""
    auth_dir: Path | None = None
    """The fleet's auth directory (``agentbus auth init``): with it, each replica gets
    its own credentials, minted from its deployment (``credentials``). Without it,
    replicas connect as the agent image's settings say (no credentials)."""
    creds_dir: Path | None = None
    """Where replicas' creds files are written (default: ``<state dir>/creds``)."""
    creds_host_dir: Path | None = None
    """``creds_dir`` as the container engine sees it, when the supervisor runs in a
    container with that directory mounted from the host (default: the same path)."""
    replica_creds_ttl_s: PositiveFloat = 3600.0
    """Lifetime of a replica's minted JWT; renewed at half of it while the replica
    runs. Bounds how long an ended replica's credentials work when this supervisor
    cannot revoke them (no operator key)."""
    secrets_key_file: Path | None = None
    """The fleet's secrets private key (``agentbus.fleet.secrets``), the same file on
    every node. Unset: ``secrets_key_file_for`` (made on first use; one host only)."""
    secrets_retired_key_files: list[Path] = []
    """Earlier secrets keys, still opened while a rotation re-seals (JSON list)."""
    log_queue_lines: PositiveInt = 1000
    """Lines buffered per replica before new ones are dropped."""
    metrics_port: int | None = None

    @model_validator(mode="after")
    def _fence_before_expiry(self) -> SupervisorSettings:
        check_timing(self.heartbeat_s, self.fence_after_s, self.heartbeat_timeout_s)
        return self

    @property
    def fence_timing(self) -> FenceTiming:
        """The effective fence timing (``fence.check_timing``)."""
        return check_timing(self.heartbeat_s, self.fence_after_s, self.heartbeat_timeout_s)


def state_dir_for(settings: SupervisorSettings, prefix: str) -> Path:
    """The process runtime's pid-file directory of this node and prefix.

    ``settings.state_dir``, else ``<tmp>/agentbus-<uid>/supervisor/<prefix>/<node_id>``.
    """
    if settings.state_dir is not None:
        return settings.state_dir
    base = Path(tempfile.gettempdir()) / f"agentbus-{os.getuid()}"
    return base / "supervisor" / prefix / settings.node_id


def creds_dir_for(settings: SupervisorSettings, prefix: str) -> Path:
    """Where replicas' creds files and warm spares' directories go, as this process sees it.

    ``settings.creds_dir``, else ``<state_dir_for>/creds``.
    """
    return settings.creds_dir or state_dir_for(settings, prefix) / "creds"


def secrets_key_file_for(settings: SupervisorSettings) -> Path:
    """The secrets key file: ``secrets_key_file``, else a generated one.

    The generated one is ``<state_dir>/secrets.key``, or with no ``state_dir``
    ``<tmp>/agentbus-<uid>/supervisor/secrets.key``: shared by this user's supervisors
    on this host (every prefix and node id), so local nodes agree on one key.
    """
    if settings.secrets_key_file is not None:
        return settings.secrets_key_file
    if settings.state_dir is not None:
        return settings.state_dir / "secrets.key"
    return Path(tempfile.gettempdir()) / f"agentbus-{os.getuid()}" / "supervisor" / "secrets.key"
