"""A local certificate authority and the certificates of a TLS stack (``agentbus auth tls``).

``make_tls_files(DIR)`` writes, in PEM (keys ECDSA P-256, mode 0600; certificates 0644):

- ``ca.pem``/``ca-key.pem``: a CA that signs the two others (valid ``CA_VALID_DAYS``);
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

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentbus.errors import ConflictError, ContractError

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1", "nats", "gateway")
"""Names every server certificate carries: loopback and the compose service names."""
CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 825
"""Validity of the server and client certificates (the longest macOS accepts)."""
CLIENT_NAME = "agentbus-client"
"""Common name of the client certificate."""


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
    files = TlsFiles.in_dir(directory)
    names = _unique([*DEFAULT_HOSTS, *hosts])
    if any(not n.strip() for n in names):
        raise ContractError("a --host value is empty")
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    if force or not (files.ca_cert.exists() and files.ca_key.exists()):
        _refuse_half(files.ca_cert, files.ca_key, force)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        written += _write_pair(files.ca_cert, ca_cert, files.ca_key, ca_key)
        force = True  # a new CA: certificates signed by the old one are useless
    else:
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConflictError(f"{files.ca_key} is not an ECDSA key")
        ca_key = loaded
    leaves: tuple[tuple[Path, Path, str, list[str], bool], ...] = (
        (files.server_cert, files.server_key, "agentbus-server", names, True),
        (files.client_cert, files.client_key, CLIENT_NAME, [], False),
    )
    for cert_path, key_path, common_name, sans, server in leaves:
        if not force and cert_path.exists() and key_path.exists():
            if server:
                _check_names(cert_path, names)
            continue
        _refuse_half(cert_path, key_path, force)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf_certificate(key, ca_cert, ca_key, common_name, sans, server=server)
        written += _write_pair(cert_path, cert, key_path, key)
    return files, written


def server_names(cert_file: Path) -> list[str]:
    """DNS names and IP addresses (as text) of the certificate in ``cert_file``."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _refuse_half(cert: Path, key: Path, force: bool) -> None:
    if not force and cert.exists() != key.exists():
        present, absent = (cert, key) if cert.exists() else (key, cert)
        raise ConflictError(f"{present} exists without {absent}: remove it or use --force")


def _check_names(cert_path: Path, wanted: list[str]) -> None:
    have = {_normal(n) for n in server_names(cert_path)}
    if missing := [n for n in wanted if _normal(n) not in have]:
        raise ConflictError(
            f"{cert_path} does not name {', '.join(missing)}: use --force to make it again"
        )


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentbus local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    start, end = _validity(CA_VALID_DAYS)
    name = _name("agentbus local CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    hosts: list[str],
    *,
    server: bool,
) -> x509.Certificate:
    start, end = _validity(CERT_VALID_DAYS)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> list[Path]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return [cert_path, key_path]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (never wider)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask may have narrowed it
    finally:
        os.close(fd)
    os.replace(tmp, path)


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
