"""How a process reaches nats-server: the pre-check of ``Bus.connect`` and its TLS context.

TLS is wanted when a ``tls_*`` file is set or a URL has the ``tls://`` scheme. nats-py
upgrades a connection to TLS only when the server's ``INFO`` says ``tls_required``, and
otherwise goes on in plain text; so with TLS wanted, the pre-check reads each server's
``INFO`` and a server that does not require TLS is refused before nats-py sends its
``CONNECT`` (which carries the credentials).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from urllib.parse import urlsplit

from agentbus.errors import ContractError, UnavailableError
from agentbus.settings import BusSettings

_INFO_WAIT_S = 1.0
"""How long the pre-check waits for a server's ``INFO`` line (a server configured with
``handshake_first`` sends none before the TLS handshake: it counts as TLS)."""


def wants_tls(settings: BusSettings) -> bool:
    """Whether ``settings`` ask for TLS: a ``tls_*`` file or a ``tls://`` URL."""
    files = (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    urls = (u.strip().lower() for u in settings.nats_url.split(","))
    return any(files) or any(u.startswith("tls://") for u in urls)


def tls_context(settings: BusSettings) -> ssl.SSLContext | None:
    """The client ``SSLContext`` of ``settings``, or None when no ``tls_*`` file is set.

    It verifies the server's certificate and host name against ``tls_ca_file`` (else
    the system's CAs) and presents ``tls_cert_file``/``tls_key_file`` if set.

    Raises:
        ContractError: a file is missing or is not a usable PEM certificate or key.
    """
    ca, cert, key = settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
    if not (ca or cert or key):
        return None
    if key and not cert:
        raise ContractError("AGENTBUS_TLS_KEY_FILE is set without AGENTBUS_TLS_CERT_FILE")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ContractError(f"TLS files unusable (ca {ca}, cert {cert}, key {key}): {exc}") from exc
    return context


async def any_server_listens(nats_url: str, timeout_s: float, *, need_tls: bool = False) -> bool:
    """Whether some server of ``nats_url`` accepts TCP connections.

    A refused URL then fails at once instead of running nats-py's retry loop until the
    connect timeout. With ``need_tls``, a server counts only if its ``INFO`` requires TLS.

    Raises:
        UnavailableError: ``need_tls`` and servers listen, but none requires TLS.
    """
    plain: list[str] = []
    for server in nats_url.split(","):
        server = server.strip()
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222),
                timeout_s,
            )
        except (OSError, TimeoutError, ValueError):
            continue
        try:
            if not need_tls or await _requires_tls(reader):
                return True
            plain.append(server)
        finally:
            writer.close()
    if plain:
        raise UnavailableError(
            f"TLS is configured but the NATS server at {', '.join(plain)} does not require "
            "it; refusing to connect in plain text (configure the server's tls block)"
        )
    return False


async def _requires_tls(reader: asyncio.StreamReader) -> bool:
    """Whether the server's ``INFO`` line requires TLS (no line in time: it does)."""
    try:
        line = await asyncio.wait_for(reader.readline(), _INFO_WAIT_S)
    except (OSError, TimeoutError):
        return True
    op, _, body = line.partition(b" ")
    if op.upper() != b"INFO":
        return True
    try:
        return bool(json.loads(body).get("tls_required"))
    except (ValueError, AttributeError):
        return False


def tls_failure(nats_url: str, exc: ssl.SSLError) -> str:
    """A one-line account of a failed TLS handshake with ``nats_url``, with a hint."""
    reason = exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            "is AGENTBUS_TLS_CA_FILE the CA that signed the server's certificate, and does "
            "that certificate name the host of the URL?"
        )
    elif "CERTIFICATE_REQUIRED" in reason.upper():
        hint = "the server verifies clients: set AGENTBUS_TLS_CERT_FILE and AGENTBUS_TLS_KEY_FILE"
    else:
        hint = "check the AGENTBUS_TLS_* files and the server's tls block"
    detail = getattr(exc, "verify_message", None) or reason
    return f"TLS handshake with {nats_url} failed: {detail} ({hint})"


def tls_env(settings: BusSettings) -> dict[str, str]:
    """The ``AGENTBUS_TLS_*`` variables of the ``tls_*`` files set in ``settings``.

    A supervisor gives them to the agents it starts, so they connect as it does.
    """
    files = {
        "AGENTBUS_TLS_CA_FILE": settings.tls_ca_file,
        "AGENTBUS_TLS_CERT_FILE": settings.tls_cert_file,
        "AGENTBUS_TLS_KEY_FILE": settings.tls_key_file,
    }
    return {name: str(path) for name, path in files.items() if path is not None}


def bus_env(settings: BusSettings) -> dict[str, str]:
    """``tls_env`` plus ``AGENTBUS_NATS_SERVERS_IN_ORDER`` when ``settings`` set it.

    What a supervisor gives the agents it starts besides the URL, so they reach the bus
    as it does (the same TLS files, the same server order).
    """
    env = tls_env(settings)
    if settings.nats_servers_in_order:
        env["AGENTBUS_NATS_SERVERS_IN_ORDER"] = "true"
    return env
