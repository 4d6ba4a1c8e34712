"""Certificate making for ``agentbus.auth.tls`` (imports ``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentbus.auth.tls import TlsFiles
from agentbus.errors import ConflictError, ContractError

CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 825
"""Validity of the server and client certificates (the longest macOS accepts)."""
CLIENT_NAME = "agentbus-client"
"""Common name of the client certificate."""


def make(files: TlsFiles, hosts: list[str], *, force: bool) -> tuple[TlsFiles, list[Path]]:
    """``agentbus.auth.tls.make_tls_files`` on ``files``, naming ``hosts``."""
    names = list(dict.fromkeys(hosts))
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
