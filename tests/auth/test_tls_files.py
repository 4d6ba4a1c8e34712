"""``agentbus auth tls``: the local CA, server and client certificates it writes."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from agentbus.auth.tls import TlsFiles, make_tls_files, nats_tls_block
from agentbus.cli import app
from agentbus.errors import ConflictError, ContractError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(path: Path) -> tuple[set[str], set[str]]:
    san = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


def test_server_certificate_names_loopback_compose_and_extra_hosts(tmp_path: Path) -> None:
    files, written = make_tls_files(tmp_path / "tls", hosts=["box.example", "10.1.2.3"])
    assert len(written) == 6
    dns, ips = _sans(files.server_cert)
    assert {"localhost", "nats", "gateway", "box.example"} <= dns
    assert {"127.0.0.1", "::1", "10.1.2.3"} <= ips
    usage = _cert(files.server_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage.value
    client_usage = _cert(files.client_cert).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client_usage.value
    ca = _cert(files.ca_cert).extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca.value.ca


def test_keys_are_private_and_certificates_readable(tmp_path: Path) -> None:
    files, _ = make_tls_files(tmp_path / "tls")
    for key in (files.ca_key, files.server_key, files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (files.ca_cert, files.server_cert, files.client_cert):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644, cert
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700


def test_certificates_verify_against_the_ca(tmp_path: Path) -> None:
    files, _ = make_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.load_cert_chain(str(files.client_cert), str(files.client_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(files.server_cert), str(files.server_key))
    server.load_verify_locations(str(files.ca_cert))
    _cert(files.server_cert).verify_directly_issued_by(_cert(files.ca_cert))
    _cert(files.client_cert).verify_directly_issued_by(_cert(files.ca_cert))


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    files, _ = make_tls_files(tmp_path / "tls")
    before = {p: p.read_bytes() for p in _all(files)}
    _, written = make_tls_files(tmp_path / "tls")
    assert written == []
    assert {p: p.read_bytes() for p in _all(files)} == before
    _, written = make_tls_files(tmp_path / "tls", force=True)
    assert set(written) == set(_all(files))
    assert all(p.read_bytes() != before[p] for p in _all(files))


def test_missing_certificate_is_signed_by_the_kept_ca(tmp_path: Path) -> None:
    files, _ = make_tls_files(tmp_path / "tls")
    ca = files.ca_cert.read_bytes()
    files.client_cert.unlink()
    files.client_key.unlink()
    _, written = make_tls_files(tmp_path / "tls")
    assert set(written) == {files.client_cert, files.client_key}
    assert files.ca_cert.read_bytes() == ca
    _cert(files.client_cert).verify_directly_issued_by(_cert(files.ca_cert))


def test_kept_server_certificate_without_a_new_host_is_refused(tmp_path: Path) -> None:
    make_tls_files(tmp_path / "tls")
    with pytest.raises(ConflictError, match=r"new\.example"):
        make_tls_files(tmp_path / "tls", hosts=["new.example"])
    files, _ = make_tls_files(tmp_path / "tls", hosts=["new.example"], force=True)
    assert "new.example" in _sans(files.server_cert)[0]


def test_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    files, _ = make_tls_files(tmp_path / "tls")
    files.server_key.unlink()
    with pytest.raises(ConflictError, match=r"server\.pem exists without"):
        make_tls_files(tmp_path / "tls")


def test_nats_tls_block(tmp_path: Path) -> None:
    files = TlsFiles.in_dir(tmp_path)
    block = nats_tls_block(files.server_cert, files.server_key, files.ca_cert, verify=True)
    assert f'cert_file: "{files.server_cert}"' in block
    assert "verify: true" in block
    with pytest.raises(ContractError):
        nats_tls_block(files.server_cert, files.server_key, verify=True)


def test_command_writes_then_keeps(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["auth", "tls", str(tmp_path / "d"), "--host", "10.9.8.7"])
    assert first.exit_code == 0, first.output
    assert "written" in first.output and "AGENTBUS_TLS_CA_FILE=" in first.output
    assert "10.9.8.7" in _sans(tmp_path / "d" / "server.pem")[1]
    again = runner.invoke(app, ["auth", "tls", str(tmp_path / "d")])
    assert again.exit_code == 0, again.output
    assert "written" not in again.output
    refused = runner.invoke(app, ["auth", "tls", str(tmp_path / "d"), "--host", "other"])
    assert refused.exit_code == 1
    assert "--force" in refused.output


def _all(files: TlsFiles) -> list[Path]:
    return [
        files.ca_cert,
        files.ca_key,
        files.server_cert,
        files.server_key,
        files.client_cert,
        files.client_key,
    ]
