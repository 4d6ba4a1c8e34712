"""Secret env values: the key file, sealing and opening, fleet-file syntax, diffs.

Pure parts, no NATS: the bus side is in ``tests/supervisor/test_secrets.py``.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import msgspec
import pytest

from agentbus.cli.fleet import changed_fields
from agentbus.errors import (
    ContractError,
    SecretCorruptedError,
    SecretError,
    SecretKeyMismatchError,
    SpecError,
)
from agentbus.fleet.secrets import (
    SecretsKeyring,
    generate_secrets_key,
    key_id,
    load_secrets_key,
    open_sealed,
    public_key_entry,
    public_key_of,
    seal,
)
from agentbus.fleet.spec import dump_fleet, parse_fleet, validate_deployment
from agentbus.messages import Deployment, SealedSecret, encode

PLAINTEXT = "pa55-w0rd:ünïcode"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "secrets.key"
    generate_secrets_key(path)
    return path


def test_key_file_is_private_and_never_overwritten(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_bytes().strip())) == 32
    before = key_file.read_bytes()
    with pytest.raises(SecretError, match="exists"):
        generate_secrets_key(key_file)
    assert key_file.read_bytes() == before


def test_generate_returns_the_public_key_of_the_file(key_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    public_key = generate_secrets_key(other)
    assert load_secrets_key(other).public_key == public_key
    assert len(key_id(public_key)) == 16
    assert key_id(public_key) != key_id(load_secrets_key(key_file).public_key)


@pytest.mark.parametrize("content", [b"", b"not base64!", base64.b64encode(b"short")])
def test_load_refuses_what_is_no_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(SecretError, match="does not hold a key"):
        load_secrets_key(path)
    with pytest.raises(SecretError, match="cannot read"):
        load_secrets_key(tmp_path / "missing.key")


def test_seal_open_round_trip(key_file: Path) -> None:
    private_key = load_secrets_key(key_file)
    sealed = seal(private_key.public_key, PLAINTEXT)
    assert sealed.key_id == key_id(private_key.public_key)
    assert PLAINTEXT.encode() not in encode(sealed)
    assert open_sealed(private_key, sealed) == PLAINTEXT
    again = seal(private_key.public_key, PLAINTEXT)
    assert again.ciphertext_b64 != sealed.ciphertext_b64  # randomized
    decoded = msgspec.json.decode(encode(sealed), type=SealedSecret)
    assert open_sealed(private_key, decoded) == PLAINTEXT


def test_wrong_key_is_a_key_mismatch(key_file: Path, tmp_path: Path) -> None:
    sealed = seal(load_secrets_key(key_file).public_key, PLAINTEXT)
    other = tmp_path / "other.key"
    generate_secrets_key(other)
    with pytest.raises(SecretKeyMismatchError) as info:
        open_sealed(load_secrets_key(other), sealed, name="API_KEY")
    assert isinstance(info.value, ContractError)
    assert "API_KEY" in str(info.value) and sealed.key_id in str(info.value)
    assert PLAINTEXT not in str(info.value)
    # A forged key id does not help: the box still fails to authenticate.
    forged = msgspec.structs.replace(sealed, key_id=key_id(load_secrets_key(other).public_key))
    with pytest.raises(SecretCorruptedError, match="authentication failed"):
        open_sealed(load_secrets_key(other), forged, name="API_KEY")


@pytest.mark.parametrize("where", [0, 20, -1])
def test_tampered_ciphertext_does_not_open(key_file: Path, where: int) -> None:
    private_key = load_secrets_key(key_file)
    sealed = seal(private_key.public_key, PLAINTEXT)
    raw = bytearray(base64.b64decode(sealed.ciphertext_b64))
    raw[where] ^= 0x01
    tampered = msgspec.structs.replace(sealed, ciphertext_b64=base64.b64encode(raw).decode())
    with pytest.raises(SecretCorruptedError, match="authentication failed"):
        open_sealed(private_key, tampered, name="K")
    cut = msgspec.structs.replace(sealed, ciphertext_b64=sealed.ciphertext_b64[:20])
    with pytest.raises(SecretCorruptedError):
        open_sealed(private_key, cut, name="K")
    garbage = msgspec.structs.replace(sealed, ciphertext_b64="%%%")
    with pytest.raises(SecretCorruptedError, match="not base64"):
        open_sealed(private_key, garbage, name="K")


def test_keyring_opens_current_and_retired_keys(key_file: Path, tmp_path: Path) -> None:
    old = load_secrets_key(key_file)
    generate_secrets_key(tmp_path / "new.key")
    new = load_secrets_key(tmp_path / "new.key")
    ring = SecretsKeyring(new, [old])
    assert ring.key_id == key_id(new.public_key)
    d = Deployment(
        name="d",
        command=["x"],
        secret_env={"A": seal(old.public_key, "a"), "B": seal(new.public_key, "b")},
    )
    assert ring.open_env(d) == {"A": "a", "B": "b"}
    with pytest.raises(SecretKeyMismatchError):
        SecretsKeyring(new).open_env(d)


def test_published_entry_checks_its_key_id(key_file: Path) -> None:
    public_key = load_secrets_key(key_file).public_key
    entry = public_key_entry(public_key, node_id="n1")
    assert public_key_of(entry) == public_key
    with pytest.raises(SecretError, match="does not match"):
        public_key_of(msgspec.structs.replace(entry, key_id="0" * 16))


FLEET = """
deployments:
  api:
    command: [python, -m, api]
    env:
      LOG_LEVEL: info
      API_KEY: {secret: true, value: "%s"}
      DB_PASSWORD: {secret_from_env: TEST_DB_PASSWORD}
      TLS_KEY: {secret_from_file: tls.key}
"""


def test_fleet_file_keeps_secrets_out_of_deployments(
    key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_DB_PASSWORD", "from-env")
    (tmp_path / "tls.key").write_text("from-file\n")
    spec = parse_fleet(FLEET % PLAINTEXT, base_dir=tmp_path)
    (d,) = spec.deployments
    assert d.env == {"LOG_LEVEL": "info"} and d.secret_env == {}
    assert PLAINTEXT not in repr(spec)
    private_key = load_secrets_key(key_file)
    (sealed,) = spec.sealed(private_key.public_key)
    assert sealed.env == {"LOG_LEVEL": "info"}
    assert SecretsKeyring(private_key).open_env(sealed) == {
        "API_KEY": PLAINTEXT,
        "DB_PASSWORD": "from-env",
        "TLS_KEY": "from-file",
    }
    wire = encode(sealed)
    for plaintext in (PLAINTEXT, "from-env", "from-file"):
        assert plaintext.encode() not in wire
    # Pre-sealed values round-trip through a fleet file.
    assert parse_fleet(dump_fleet([sealed])).deployments == [sealed]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{secret_from_env: NOT_SET_ANYWHERE}", "'NOT_SET_ANYWHERE' is not set"),
        ("{secret_from_file: missing.txt}", "cannot read secret file"),
        ("{secret: false, value: x}", "'secret' must be true"),
        ("{secret: true, value: [1]}", "'value' must be a string"),
        ("{value: x}", "a secret is"),
    ],
)
def test_bad_secret_values_name_the_line_and_key(tmp_path: Path, value: str, message: str) -> None:
    text = f"deployments:\n  a:\n    command: [x]\n    env:\n      K: {value}\n"
    with pytest.raises(SpecError) as info:
        parse_fleet(text, source="fleet.yaml", base_dir=tmp_path)
    (line,) = str(info.value).splitlines()
    assert line.startswith("fleet.yaml:5: deployments.a.env: K: ") and message in line


def test_secret_names_are_checked_like_env_names(key_file: Path) -> None:
    text = (
        "deployments:\n  a:\n    command: [x]\n    env:\n"
        "      AGENTBUS_PREFIX: {secret: true, value: z}\n"
        "      1bad: {secret: true, value: z}\n"
    )
    with pytest.raises(SpecError) as info:
        parse_fleet(text, source="f")
    assert "deployments.a.env.AGENTBUS_PREFIX: is set by the supervisor" in str(info.value)
    assert "deployments.a.env.1bad: is not a valid environment variable name" in str(info.value)
    public_key = load_secrets_key(key_file).public_key
    both = Deployment(
        name="a", command=["x"], env={"K": "v"}, secret_env={"K": seal(public_key, "v")}
    )
    with pytest.raises(SpecError, match=r"secret_env\.K: is also in env"):
        validate_deployment(both)


def test_changed_fields_never_show_secrets(key_file: Path) -> None:
    public_key = load_secrets_key(key_file).public_key
    old = Deployment(name="a", command=["x"], secret_env={"K": seal(public_key, PLAINTEXT)})
    new = msgspec.structs.replace(
        old, secret_env={"K": seal(public_key, PLAINTEXT), "L": seal(public_key, "l")}
    )
    changes = changed_fields(old, new)
    assert changes == ["secret_env.K sealed again", "secret_env.L added"]
    assert changed_fields(new, old) == ["secret_env.K sealed again", "secret_env.L removed"]
