"""Choosing and connecting this node's runtime (docker, podman or processes)."""

from __future__ import annotations

import os

from loguru import logger

from agentbus.errors import UnavailableError
from agentbus_supervisor.docker_runtime import DockerRuntime
from agentbus_supervisor.process_runtime import ProcessRuntime
from agentbus_supervisor.runtime import Runtime
from agentbus_supervisor.settings import SupervisorSettings, state_dir_for


def podman_socket_url() -> str:
    """Podman's API socket: rootless ``$XDG_RUNTIME_DIR/podman/podman.sock``, else rootful."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime_dir:
        return f"unix://{runtime_dir}/podman/podman.sock"
    return "unix:///run/podman/podman.sock"


async def make_runtime(settings: SupervisorSettings, prefix: str) -> Runtime:
    """The runtime ``settings.runtime`` asks for (``auto``: docker if it answers).

    Raises:
        UnavailableError: ``docker`` or ``podman`` was asked for and no engine answers.
    """
    if settings.runtime in ("docker", "podman", "auto"):
        url = settings.docker_url
        if settings.runtime == "podman" and url is None:
            url = podman_socket_url()
        try:
            return await DockerRuntime.connect(
                url,
                node_id=settings.node_id,
                prefix=prefix,
                network=settings.docker_network,
                read_only=settings.docker_read_only,
                user=settings.docker_user,
                init=settings.docker_init,
                extra_labels=settings.docker_labels,
                log_line_max_bytes=settings.log_line_max_bytes,
            )
        except UnavailableError as exc:
            if settings.runtime != "auto":
                raise
            logger.info("no Docker engine; running replicas as processes", error=str(exc))
    return ProcessRuntime(
        queue_lines=settings.log_queue_lines,
        line_max_bytes=settings.log_line_max_bytes,
        close_grace_s=settings.stop_grace_s,
        state_dir=state_dir_for(settings, prefix),
    )
