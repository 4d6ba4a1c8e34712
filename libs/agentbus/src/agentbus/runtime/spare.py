"""A warm spare: an agent process started and imported before it has an identity.

A supervisor keeps ``Deployment.warm_spares`` of them per deployment and node
(``agentbus_supervisor.warm_pool``). A spare is started with ``AGENTBUS_AGENT_SPARE_DIR``
naming a directory with two FIFOs and without ``AGENTBUS_AGENT_ID`` /
``AGENTBUS_AGENT_REPLICA``. Once imported, its ``Agent.main`` writes one byte into
``ready.fifo`` (the supervisor claims only spares that did) and blocks on opening
``identity.fifo`` for reading (no CPU, no connection) until the supervisor hands it a
dead replica's identity: one JSON object of ``AGENTBUS_*`` environment values, written
once and closed. The spare sets them and goes on as that replica (credentials, if any,
are already in its creds file). A close without a payload means the claim was
abandoned: the spare exits with ``EXIT_NO_IDENTITY``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

SPARE_DIR_ENV = "AGENTBUS_AGENT_SPARE_DIR"
"""Names the directory of a spare's FIFOs; unset: not a spare."""
IDENTITY_FIFO = "identity.fifo"
"""The FIFO a spare reads its identity from."""
READY_FIFO = "ready.fifo"
"""The FIFO a spare writes one byte into once it is ready to be claimed."""
IDENTITY_ENV = ("AGENTBUS_AGENT_ID", "AGENTBUS_AGENT_REPLICA")
"""The environment values that differ between replicas of one deployment."""
WARM_IMPORTS = ("prometheus_client",)
"""What an agent imports as it starts serving (its metrics registry, about 40 ms of
CPU): a spare imports it before it says it is ready, so a claim does not pay for it."""
EXIT_NO_IDENTITY = 75
"""Exit status of a spare whose claim was abandoned (EX_TEMPFAIL)."""
IDENTITY_MAX_BYTES = 65536


class IdentityError(ValueError):
    """The identity a spare read is not a JSON object of ``AGENTBUS_*`` strings."""


def parse_identity(raw: bytes) -> dict[str, str]:
    """The environment values in one identity payload.

    Raises:
        IdentityError: not a JSON object of ``AGENTBUS_*`` names to strings.
    """
    try:
        values = json.loads(raw)
    except ValueError as exc:
        raise IdentityError(f"identity is not JSON: {exc}") from exc
    if not isinstance(values, dict) or not values:
        raise IdentityError("identity is not a non-empty JSON object")
    for name, value in values.items():
        if not name.startswith("AGENTBUS_") or not isinstance(value, str):
            raise IdentityError(f"identity holds {name!r}: only AGENTBUS_* strings")
    return values


def await_identity(fifo: str) -> dict[str, str]:
    """Block until the supervisor writes this spare's identity into ``fifo``, then read it.

    Raises:
        IdentityError: the payload was empty (the claim was abandoned) or malformed.
        OSError: the FIFO cannot be opened.
    """
    with open(fifo, "rb") as pipe:  # blocks, without CPU, until a writer opens it
        raw = pipe.read(IDENTITY_MAX_BYTES + 1)
    if not raw:
        raise IdentityError("the claim was abandoned (no identity written)")
    if len(raw) > IDENTITY_MAX_BYTES:
        raise IdentityError(f"identity longer than {IDENTITY_MAX_BYTES} bytes")
    return parse_identity(raw)


def take_identity() -> bool:
    """In a spare, wait for an identity and put it into ``os.environ``; else do nothing.

    Returns True when the process was a spare (its settings must be read again). A
    spare whose claim was abandoned or malformed exits with ``EXIT_NO_IDENTITY``.
    """
    folder = os.environ.get(SPARE_DIR_ENV)
    if not folder:
        return False
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    signal_ready(os.path.join(folder, READY_FIFO))
    try:
        values = await_identity(os.path.join(folder, IDENTITY_FIFO))
    except (IdentityError, OSError) as exc:
        print(f"agentbus spare: no identity: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NO_IDENTITY) from exc
    os.environ.update(values)
    del os.environ[SPARE_DIR_ENV]
    return True


def signal_ready(fifo: str) -> None:
    """Tell the supervisor reading ``fifo`` that this spare waits for its identity.

    Without a reader (a supervisor that has gone) nothing is told: that supervisor's
    successor stops spares it never saw ready.
    """
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"r")
    except OSError:
        pass
    finally:
        os.close(fd)
