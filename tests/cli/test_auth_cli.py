"""``agentbus auth init|creds|show``: files, modes, no seed where none belongs."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.auth import jwt_claims, nats_jwt
from agentbus.auth.authority import AuthDir, Authority, write_secret
from agentbus.auth.creds import creds_jwt, creds_outdated
from agentbus.auth.permissions import Permissions, service_permissions
from agentbus.cli import app
from agentbus.cli.connect import resolve_settings
from agentbus.embedded import EmbeddedState
from agentbus.names import Names

runner = CliRunner()
SEED = re.compile(r"\bS[OAU][A-Z2-7]{50,}\b")
"""An nkey seed (operator, account or user) as text."""


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_secrets_0600_and_no_seed_in_server_conf(agentbus_home: Path) -> None:
    code, out, err = invoke("auth", "init", "--json")
    assert code == 0, err
    report = json.loads(out)
    auth = agentbus_home / "auth"  # the default: $AGENTBUS_HOME/auth
    assert report["path"] == str(auth) and report["created"] is True
    assert mode(auth) == 0o700
    secrets = [*auth.glob("*.nk"), *auth.glob("creds/*.creds")]
    assert {p.name for p in auth.glob("creds/*.creds")} == {
        f"{name}.creds"
        for name in (
            "registry",
            "scheduler",
            "checkpoint",
            "gateway",
            "archiver",
            "operator",
            "sys",
        )
    }
    assert len(secrets) == 4 + 7
    assert {str(p): mode(p) for p in secrets} == {str(p): 0o600 for p in secrets}
    conf = (auth / "server.conf").read_text()
    assert "operator:" in conf and "resolver_preload" in conf
    assert not SEED.search(conf)
    for jwt_file in auth.glob("*.jwt"):
        assert not SEED.search(jwt_file.read_text())
    assert SEED.search((auth / "signing.nk").read_text())  # the pattern does find seeds


def test_init_again_keeps_the_keys_unless_forced(tmp_path: Path) -> None:
    auth = tmp_path / "keys"
    assert invoke("auth", "init", str(auth))[0] == 0
    operator = (auth / "operator.jwt").read_text()
    (auth / "creds" / "gateway.creds").unlink()
    code, out, _ = invoke("auth", "init", str(auth))
    assert code == 0 and "kept" in out
    assert (auth / "operator.jwt").read_text() == operator
    assert (auth / "creds" / "gateway.creds").exists()  # a missing identity is minted again
    assert invoke("auth", "init", str(auth), "--force")[0] == 0
    assert (auth / "operator.jwt").read_text() != operator


def test_init_again_reissues_creds_an_older_version_minted(tmp_path: Path) -> None:
    """Creds granting less than this version's permissions (an upgrade) are minted anew."""
    auth_path = tmp_path / "keys"
    assert invoke("auth", "init", str(auth_path))[0] == 0
    assert invoke("auth", "creds", "supervisor", "--node", "n1", "--dir", str(auth_path))[0] == 0
    auth = AuthDir(auth_path)
    older = Permissions(publish=("agentbus.old",), subscribe=(), inbox_prefix="_INBOX_old")
    for name in ("scheduler", "supervisor-n1"):
        write_secret(auth.creds(name), Authority(auth).mint(name, older).creds_text())
    registry = auth.creds("registry").read_text()

    code, out, _ = invoke("auth", "init", str(auth_path))
    assert code == 0 and "minted with this version's permissions: scheduler, supervisor-n1" in out

    names = Names("agentbus")
    for name, permissions in (
        ("scheduler", service_permissions(names, "scheduler")),
        ("supervisor-n1", service_permissions(names, "supervisor", node_id="n1")),
    ):
        claims = jwt_claims.decode(creds_jwt(auth.creds(name)))
        assert claims["name"] == name
        assert claims["nats"]["pub"] == permissions.claims()["pub"], name
    assert auth.creds("registry").read_text() == registry  # current creds are kept


def test_init_again_leaves_creds_of_another_prefix_and_unreadable_ones(tmp_path: Path) -> None:
    auth_path = tmp_path / "keys"
    assert invoke("auth", "init", str(auth_path), "--prefix", "prod")[0] == 0
    before = {p.name: p.read_text() for p in auth_path.glob("creds/*.creds")}
    # run again without --prefix (the default fleet): prod's creds are not agentbus's
    assert invoke("auth", "init", str(auth_path))[0] == 0
    assert {p.name: p.read_text() for p in auth_path.glob("creds/*.creds")} == before

    scheduler = AuthDir(auth_path).creds("scheduler")
    scheduler.write_text("not a creds file")
    assert invoke("auth", "init", str(auth_path), "--prefix", "prod")[0] == 0
    assert "USER JWT" in scheduler.read_text()  # unparsable: minted again


def test_a_creds_file_this_process_may_not_read_is_not_outdated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose hands the services' creds to their container user (0600): a developer
    who is not root cannot read them, and must not re-mint them on every `just up`."""
    path = tmp_path / "scheduler.creds"
    path.write_text("")
    wanted = service_permissions(Names("agentbus"), "scheduler")
    assert creds_outdated(path, wanted, "agentbus")  # readable and no JWT: mint
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # as non-root
    assert not creds_outdated(path, wanted, "agentbus")
    assert creds_outdated(tmp_path / "missing.creds", wanted, "agentbus")


def test_init_resolver_dir_rewrites_server_conf(tmp_path: Path) -> None:
    code, _, err = invoke("auth", "init", str(tmp_path / "a"), "--resolver-dir", "/data/resolver")
    assert code == 0, err
    assert 'dir: "/data/resolver"' in (tmp_path / "a" / "server.conf").read_text()


def test_creds_mints_a_supervisor_of_a_node(tmp_path: Path) -> None:
    auth = tmp_path / "keys"
    invoke("auth", "init", str(auth), "--prefix", "fleet1")
    code, out, err = invoke(
        "auth", "creds", "supervisor", "--node", "n1", "--dir", str(auth), "--prefix", "fleet1"
    )
    assert code == 0, err
    path = Path(out.strip())
    assert path == auth / "creds" / "supervisor-n1.creds"
    assert mode(path) == 0o600
    claims = nats_jwt.decode(creds_jwt(path))
    assert claims["name"] == "supervisor-n1"
    assert "fleet1.supervisor.n1.>" in claims["nats"]["sub"]["allow"]

    code, _, err = invoke("auth", "creds", "supervisor", "--dir", str(auth))
    assert code == 2 and "--node" in err
    code, _, err = invoke("auth", "creds", "janitor", "--dir", str(auth))
    assert code == 2 and "unknown service" in err
    code, _, err = invoke("auth", "creds", "registry", "--dir", str(tmp_path / "none"))
    assert code == 1 and "agentbus auth init" in err


def test_show_lists_identities_and_never_a_seed(tmp_path: Path) -> None:
    auth = tmp_path / "keys"
    invoke("auth", "init", str(auth))
    code, out, err = invoke("auth", "show", str(auth))
    assert code == 0, err
    assert "operator" in out and "scheduler" in out and "never" in out
    assert not SEED.search(out)
    code, out, _ = invoke("auth", "show", str(auth), "--json")
    summary = json.loads(out)
    assert not SEED.search(out)
    names = {i["name"] for i in summary["identities"]}
    assert names == {
        "registry",
        "scheduler",
        "checkpoint",
        "gateway",
        "archiver",
        "operator",
        "sys",
    }
    assert summary["operator"].startswith("O") and summary["account"].startswith("A")
    code, _, err = invoke("auth", "show", str(tmp_path / "none"))
    assert code == 1 and "agentbus auth init" in err


def test_cli_takes_the_embedded_stacks_operator_creds(
    agentbus_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agentbus_home.mkdir(parents=True)
    state = EmbeddedState(
        nats_url="nats://127.0.0.1:4999",
        prefix="emb",
        pids={"nats-server": os.getpid()},
        creds_file="/keys/operator.creds",
    )
    (agentbus_home / "embedded.json").write_bytes(msgspec.json.encode(state))
    assert resolve_settings().creds_file == Path("/keys/operator.creds")
    assert resolve_settings("nats://other:4222").creds_file is None  # not that stack's
    monkeypatch.setenv("AGENTBUS_CREDS_FILE", "/mine.creds")
    assert resolve_settings().creds_file == Path("/mine.creds")  # the environment first


def test_a_corrupt_jwt_file_is_named_with_the_repair(agentbus_home: Path) -> None:
    code, _, err = invoke("auth", "init")
    assert code == 0, err
    account = agentbus_home / "auth" / "account.jwt"
    account.write_text("garbage\n")
    code, _, err = invoke("auth", "show")
    assert code != 0
    assert "account.jwt" in err and "--force" in err, err
