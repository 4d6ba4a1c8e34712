"""A local certificate authority and the certificates of a TLS stack (``agentbus auth tls``).

``make_tls_files(DIR)`` writes, in PEM (keys ECDSA P-256, mode 0600; certificates 0644):

- ``ca.pem``/``ca-key.pem``: a CA that signs the two others (valid 10 years; the others 825 days);
- ``server.pem``/``server-key.pem``: nats-server's and the gateway's certificate, for
  ``localhost``, ``127.0.0.1``, ``::1``, the compose service names (``nats``,
  ``gateway``) and the extra host names or addresses given;
- ``client.pem``/``client-key.pem``: a client certificate, for a server that verifies
  clients (mutual TLS).

Existing files are kept (the CA signs missing certificates) unless ``force``; a kept
server certificate that lacks a requested name is an error. For local use and tests;
in production bring certificates from your own CA and point the settings at them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentbus.errors import ContractError

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1", "nats", "gateway")
"""Names every server certificate carries: loopback and the compose service names."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the six files in one directory (they may not exist yet)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        """The file names ``make_tls_files`` uses in ``directory``."""
        d = Path(directory)
        return cls(
            directory=d,
            ca_cert=d / "ca.pem",
            ca_key=d / "ca-key.pem",
            server_cert=d / "server.pem",
            server_key=d / "server-key.pem",
            client_cert=d / "client.pem",
            client_key=d / "client-key.pem",
        )


def make_tls_files(
    directory: Path, *, hosts: Iterable[str] = (), force: bool = False
) -> tuple[TlsFiles, list[Path]]:
    """Write the CA, server and client files into ``directory`` (created 0700 if missing).

    Returns:
        The paths, and the files written by this call (empty: all were kept).

    Raises:
        ContractError: a host is empty.
        ConflictError: without ``force``, a kept file does not fit: a certificate whose
            key is missing, or a server certificate without one of ``hosts``.
    """
    from agentbus.auth import _certs  # cryptography: loaded by the commands that make files

    return _certs.make(TlsFiles.in_dir(directory), [*DEFAULT_HOSTS, *hosts], force=force)


def server_names(cert_file: Path) -> list[str]:
    """DNS names and IP addresses (as text) of the certificate in ``cert_file``."""
    from agentbus.auth import _certs

    return _certs.server_names(cert_file)


def nats_tls_block(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None = None,
    *,
    verify: bool = False,
    timeout_s: float = 2.0,
) -> str:
    """The ``tls { ... }`` block of a nats-server configuration for client connections.

    With it the server requires TLS of every client; with ``verify`` (needs ``ca_file``)
    also a client certificate signed by ``ca_file``. ``timeout_s``: TLS handshake limit.

    Raises:
        ContractError: ``verify`` without ``ca_file``.
    """
    if verify and ca_file is None:
        raise ContractError("verifying client certificates needs a CA file")
    lines = [f"  cert_file: {_quoted(cert_file)}", f"  key_file: {_quoted(key_file)}"]
    if ca_file is not None:
        lines.append(f"  ca_file: {_quoted(ca_file)}")
    lines += [f"  verify: {'true' if verify else 'false'}", f"  timeout: {timeout_s:g}"]
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def _quoted(path: Path) -> str:
    text = str(Path(path).resolve())
    if '"' in text or "\\" in text:
        raise ContractError(f"path not usable in a nats-server configuration: {text!r}")
    return f'"{text}"'
