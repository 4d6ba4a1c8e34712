"""How ``agentbus`` commands find and reach a stack.

Precedence of the NATS URL and prefix: the command's options, then the environment
(``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX``; typer reads both into the options), then
the state file of a running embedded stack (``agentbus.embedded.state``), then the
defaults of ``BusSettings``. A state file of a stack with TLS also gives the CA and
client certificate (unless ``AGENTBUS_TLS_CA_FILE`` is set). When the URL comes from
``AGENTBUS_NATS_URL`` while a running embedded stack at another URL owns the state
file, a note on stderr says which one the command talks to; ``--nats-url`` given on
the command line is taken without a note.
defaults of ``BusSettings``. When the URL comes from ``AGENTBUS_NATS_URL`` while a
running embedded stack at another URL owns the state file, a note on stderr says
which one the command talks to; ``--nats-url`` given on the command line is taken
without a note.

Credentials: ``AGENTBUS_CREDS_FILE`` (``BusSettings`` reads it), else the operator
creds the embedded stack recorded in its state file when the command talks to that
stack, else none (a server with authentication then refuses the connect).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agentbus.auth.tls import TlsFiles
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.embedded.state import read_state, state_file_path
from agentbus.settings import BusSettings


def resolve_settings(nats_url: str | None = None, prefix: str | None = None) -> BusSettings:
    """Bus settings from explicit values, else the embedded state file, else defaults.

    Credentials: ``AGENTBUS_CREDS_FILE``, else the state file's operator creds when
    the URL is the embedded stack's (module docstring).

    The state file is used only when ``nats_url`` is not given, so a URL from the
    command line or the environment is never paired with another stack's prefix.
    """
    state = read_state()
    tls: dict[str, Path] = {}
    creds_file: str | None = None
    if nats_url is None and state is not None:
        nats_url, prefix = state.nats_url, prefix or state.prefix
        if state.tls_dir and not os.environ.get("AGENTBUS_TLS_CA_FILE"):
            files = TlsFiles.in_dir(Path(state.tls_dir))
            tls = {
                "tls_ca_file": files.ca_cert,
                "tls_cert_file": files.client_cert,
                "tls_key_file": files.client_key,
            }
    if state is not None and nats_url == state.nats_url:
        creds_file = state.creds_file or None
    elif state is not None and nats_url != state.nats_url:
        if nats_url == os.environ.get("AGENTBUS_NATS_URL"):  # from the environment
            print(
                f"note: talking to {nats_url} (AGENTBUS_NATS_URL), not the embedded stack "
                f"at {state.nats_url} (state file {state_file_path()}); --nats-url chooses",
                file=sys.stderr,
            )
    values: dict[str, str | Path] = {
        k: v for k, v in (("nats_url", nats_url), ("prefix", prefix)) if v
    }
    if creds_file and not os.environ.get("AGENTBUS_CREDS_FILE"):
        values["creds_file"] = creds_file
    return BusSettings(**values, **tls)  # type: ignore[arg-type]


async def connect_client(settings: BusSettings, *, timeout_s: float = 5.0) -> Client:
    """A ``Client`` on ``settings``, failing after ``timeout_s`` when no server answers.

    Raises:
        UnavailableError: no NATS server reachable at ``settings.nats_url``.
    """
    bounded = settings.model_copy(update={"connect_timeout_s": timeout_s})
    return Client(await Bus.connect(bounded, name="agentbus-cli"))
