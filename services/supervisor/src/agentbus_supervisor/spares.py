"""One warm spare: its spec, its directory's FIFOs, how it is told apart from replicas.

A spare's directory (beside the replicas' creds directories) holds ``identity.fifo``
and ``ready.fifo`` (``agentbus.runtime.spare``), the replica's creds file once claimed,
and ``claim.json`` naming the replica it became (read when a restarted supervisor
adopts it). The pool that keeps them: ``warm_pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from agentbus.runtime.spare import IDENTITY_ENV, READY_FIFO, SPARE_DIR_ENV
from agentbus_supervisor.runtime import (
    CONTAINER_CREDS_DIR,
    CREDS_FILE_NAME,
    LABEL_AGENT_ID,
    LABEL_REPLICA,
    LABEL_SPEC,
    ReplicaHandle,
    ReplicaSpec,
)

CLAIM_FILE = "claim.json"
SPARE_ID = re.compile(r".+-spare-[0-9a-f]{8}")
"""A spare's id, ``<deployment>-spare-<8 hex>``: never a replica's ``<deployment>-<n>``
(n ≤ 1000, so at most four digits)."""


def new_spare_id(deployment: str) -> str:
    """A fresh spare id of ``deployment`` (matches ``SPARE_ID``)."""
    return f"{deployment}-spare-{secrets.token_hex(4)}"


SPARE_REPLICA = -1
"""The replica index of every spare (labels, handles): never a placed replica's."""
_PER_INSTANCE_ENV = (*IDENTITY_ENV, SPARE_DIR_ENV, "AGENTBUS_CREDS_FILE")


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
class Spare:
    """One warm spare of the pool: its instance, its exit watch, whether it is ready."""

    spare_id: str
    deployment: str
    template: str
    handle: ReplicaHandle | None = None  # None while its start is under way
    waiter: asyncio.Task[None] | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    ready_fd: int | None = None  # its ready FIFO, read until the spare writes into it

    def listen(self, folder: Path) -> None:
        """Open the ready FIFO and set ``ready`` when the spare writes into it."""
        fd = self.ready_fd = os.open(folder / READY_FIFO, os.O_RDONLY | os.O_NONBLOCK)

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                if os.read(fd, 16):
                    self.ready.set()
            self.close()

        asyncio.get_running_loop().add_reader(fd, readable)

    def close(self) -> None:
        """Stop listening for readiness (it came, or the spare is gone)."""
        if (fd := self.ready_fd) is not None:
            self.ready_fd = None
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)


def spare_spec(
    spec: ReplicaSpec, spare_id: str, runtime: str, own_dir: Path, host_dir: Path
) -> ReplicaSpec:
    """The spec of spare ``spare_id``: ``spec`` without identity, in its own directory.

    ``runtime``: ``docker`` (the directory is bind-mounted at ``CONTAINER_CREDS_DIR``)
    or ``process`` (the path as this process sees it, ``own_dir``).
    """
    env = {k: v for k, v in spec.env.items() if k not in IDENTITY_ENV}
    folder = CONTAINER_CREDS_DIR if runtime != "process" else str(own_dir / spare_id)
    env[SPARE_DIR_ENV] = folder
    if "AGENTBUS_CREDS_FILE" in env:
        env["AGENTBUS_CREDS_FILE"] = f"{folder}/{CREDS_FILE_NAME}"
    spare = dataclasses.replace(
        spec,
        replica=SPARE_REPLICA,
        agent_id=spare_id,
        env=env,
        creds_file=str(host_dir / spare_id / CREDS_FILE_NAME),
        secrets_failure=None,
    )
    labels = {
        **spec.labels,
        LABEL_REPLICA: str(SPARE_REPLICA),
        LABEL_AGENT_ID: spare_id,
        LABEL_SPEC: spare.digest,
    }
    return dataclasses.replace(spare, labels=labels)
