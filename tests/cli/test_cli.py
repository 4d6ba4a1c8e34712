"""CLI argument handling and errors: clear messages and exit codes, never a traceback."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.cli.connect import resolve_settings
from agentbus.embedded import EmbeddedState, free_port, read_state
from agentbus.messages import TaskRecord, encode

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def write_state(home: Path, *, nats_url: str, prefix: str, pid: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    state = EmbeddedState(
        nats_url=nats_url,
        gateway_url="http://127.0.0.1:1",
        prefix=prefix,
        pids={"nats-server": pid},
    )
    (home / "embedded.json").write_bytes(msgspec.json.encode(state))


def dead_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "submit" in result.output
    assert "demo" in result.output


def test_submit_rejects_invalid_json() -> None:
    code, _, err = invoke("submit", "echo", "{not json", "--nats-url", dead_url())
    assert code == 2
    assert "JSON_INPUT is not valid JSON" in err


def test_submit_rejects_invalid_capability() -> None:
    code, _, err = invoke("submit", "Not A Token", "{}", "--nats-url", dead_url())
    assert code == 2
    assert "capability 'Not A Token' is not a valid token" in err


def test_unreachable_server_is_a_clear_error() -> None:
    url = dead_url()
    code, _, err = invoke("submit", "echo", "{}", "--nats-url", url)
    assert code == 1
    assert f"no NATS server reachable at {url}" in err


def test_option_errors_exit_2() -> None:
    assert runner.invoke(app, ["submit"]).exit_code == 2  # missing CAPABILITY
    assert runner.invoke(app, ["embedded", "--runtime", "vm"]).exit_code == 2
    assert runner.invoke(app, ["demo", "review", "--replicas", "0"]).exit_code == 2
    assert runner.invoke(app, ["deploy", "x", "--command", "a", "--replicas", "-1"]).exit_code == 2


def test_deploy_needs_image_or_command() -> None:
    code, _, err = invoke("deploy", "web", "--nats-url", dead_url())
    assert code == 2
    assert "give --image, --command or both" in err


def test_deploy_validates_env_and_names() -> None:
    code, _, err = invoke("deploy", "web", "--command", "python -m x", "-e", "NOVALUE")
    assert (code, "--env 'NOVALUE': use KEY=VALUE" in err) == (2, True)
    code, _, err = invoke("deploy", "Web.App", "--image", "x")
    assert (code, "not a valid token" in err) == (2, True)
    code, _, err = invoke("deploy", "web", "--image", "x", "--restart-policy", "sometimes")
    assert (code, "use always, on-failure or never" in err) == (2, True)


def test_demo_rejects_a_missing_path(tmp_path: Path) -> None:
    code, _, err = invoke("demo", "review", str(tmp_path / "nope"), "--nats-url", dead_url())
    assert code == 2
    assert "is not a directory" in err


def test_embedded_refuses_a_second_stack(agentbus_home: Path) -> None:
    write_state(agentbus_home, nats_url="nats://127.0.0.1:4999", prefix="x", pid=os.getpid())
    code, _, err = invoke("embedded")
    assert code == 1
    assert "already running at nats://127.0.0.1:4999" in err


def test_settings_precedence(agentbus_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_settings().nats_url == "nats://127.0.0.1:4222"
    write_state(agentbus_home, nats_url="nats://127.0.0.1:4999", prefix="emb", pid=os.getpid())
    s = resolve_settings()
    assert (s.nats_url, s.prefix) == ("nats://127.0.0.1:4999", "emb")
    assert resolve_settings(None, "other").prefix == "other"
    s = resolve_settings("nats://h:1", None)  # an explicit URL never takes the state's prefix
    assert (s.nats_url, s.prefix) == ("nats://h:1", "agentbus")


def test_stale_state_file_is_ignored(agentbus_home: Path) -> None:
    write_state(agentbus_home, nats_url="nats://127.0.0.1:4999", prefix="x", pid=2**22 + 1)
    assert read_state() is None
    assert resolve_settings().nats_url == "nats://127.0.0.1:4222"


@pytest.mark.nats
async def test_task_prints_the_record(nats_url: str, prefix: str, bus: Bus) -> None:
    now = datetime.now(UTC)
    record = TaskRecord(
        task_id="t1",
        capability="echo",
        status="succeeded",
        created_at=now,
        updated_at=now,
        output=msgspec.Raw(b'{"ok":true}'),
    )
    kv = await bus.kv(bus.names.tasks_bucket)
    await kv.put("t1", encode(record))
    code, out, err = await asyncio.to_thread(
        invoke, "task", "t1", "--nats-url", nats_url, "--prefix", prefix
    )
    assert code == 0, err
    printed = msgspec.json.decode(out, type=TaskRecord)
    assert printed.status == "succeeded"
    assert msgspec.json.decode(printed.output) == {"ok": True}


@pytest.mark.nats
async def test_task_not_found_and_no_service(nats_url: str, prefix: str, bus: Bus) -> None:
    code, _, err = await asyncio.to_thread(
        invoke, "task", "missing", "--nats-url", nats_url, "--prefix", prefix
    )
    assert code == 1
    assert "task 'missing' not found" in err
    code, _, err = await asyncio.to_thread(
        invoke, "agents", "--nats-url", nats_url, "--prefix", prefix
    )
    assert code == 1
    assert f"no service answers on '{prefix}.registry.agents'" in err


@pytest.mark.nats
async def test_state_file_is_used_by_commands(
    nats_url: str, prefix: str, bus: Bus, agentbus_home: Path
) -> None:
    write_state(agentbus_home, nats_url=nats_url, prefix=prefix, pid=os.getpid())
    code, _, err = await asyncio.to_thread(invoke, "task", "missing")
    assert code == 1
    assert "task 'missing' not found" in err  # reached the server and the prefix's bucket
