"""Deployment secrets end to end: real nats-server, scheduler, supervisor and Docker.

A secret env value applied from a fleet file reaches the container, while the
deployment in KV, ``agentbus ps --json``, the events and logs streams and the
supervisor's own log never hold its plaintext. A supervisor holding another key
refuses the replica with an event and a metric, and goes on running the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import msgspec
import pytest
from loguru import logger
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agentbus.bus import Bus
from agentbus.cli import app
from agentbus.fleet.secrets import (
    PUBLIC_KEY_ENTRY,
    generate_secrets_key,
    load_secrets_key,
    public_key_entry,
    seal,
)
from agentbus.messages import Deployment, SecretsPublicKey, encode
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import (
    BASE_IMAGE,
    EventLog,
    docker_settings,
    place,
    process_settings,
    put_deployment,
    replica_where,
    running_supervisor,
    status_of,
    stream_bytes,
)

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]
SHOW_DIGEST = (
    "import hashlib, os, time\n"
    "print('digest', hashlib.sha256(os.environ['API_KEY'].encode()).hexdigest(), flush=True)\n"
    "print('plain', os.environ['PLAIN'], flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def log_records() -> Iterator[list[str]]:
    """Every loguru record (serialized, with its fields) while the test runs."""
    records: list[str] = []
    sink = logger.add(records.append, level="DEBUG", serialize=True)
    yield records
    logger.remove(sink)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.docker
async def test_secret_reaches_the_container_and_nowhere_else(
    bus: Bus,
    docker: aiodocker.Docker,
    node_containers: str,
    nats_url: str,
    prefix: str,
    tmp_path: Path,
    log_records: list[str],
) -> None:
    node_id = node_containers
    key_file = tmp_path / "keys" / "secrets.key"
    generate_secrets_key(key_file)
    secret = f"s3cret-{uuid.uuid4().hex}"
    (tmp_path / "api.key").write_text(secret + "\n")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        json.dumps(
            {
                "deployments": {
                    "vault": {
                        "image": BASE_IMAGE,
                        "image_command": ["python3", "-c", SHOW_DIGEST],
                        "heartbeat_timeout": None,
                        "env": {"PLAIN": "visible", "API_KEY": {"secret_from_file": "api.key"}},
                    }
                }
            }
        )
    )
    conn = ("--nats-url", nats_url, "--prefix", prefix)
    settings = docker_settings(node_id, docker_network="none", secrets_key_file=key_file)
    async with running_scheduler(bus), running_supervisor(bus, settings):
        code, out, err = await asyncio.to_thread(cli, "apply", "-f", str(fleet), *conn)
        assert code == 0, err
        running = await eventually(
            replica_where(bus, node_id, lambda r: r.state == "running"), timeout_s=60
        )
        digest = hashlib.sha256(secret.encode()).hexdigest()

        async def logged_digest() -> bool:
            lines = b"".join(await stream_bytes(bus, bus.names.logs_stream))
            return f"digest {digest}".encode() in lines and b"plain visible" in lines

        await eventually(logged_digest, timeout_s=30, what="the container's digest line")
        info = await docker.containers.container(running.runtime_id).show()
        assert f"API_KEY={secret}" in info["Config"]["Env"]  # the host's root sees it

        # Applied again: sealed anew (other ciphertext), the replica is not replaced.
        code, out, err = await asyncio.to_thread(cli, "apply", "-f", str(fleet), *conn)
        assert code == 0, err
        assert "secret_env.API_KEY sealed again" in out
        code, ps_out, err = await asyncio.to_thread(cli, "ps", "--json", *conn)
        assert code == 0, err
        (row,) = json.loads(ps_out)
        assert row["state"] == "running" and row["restarts"] == 0
        assert (await status_of(bus, node_id)()).replicas[0].runtime_id == running.runtime_id

        kv_raw = await stream_bytes(bus, f"KV_{bus.names.deployments_bucket}")
        events_raw = await stream_bytes(bus, bus.names.events_stream)
        logs_raw = await stream_bytes(bus, bus.names.logs_stream)
    assert len(kv_raw) == 2 and all(b'"SealedSecret"' in m for m in kv_raw)
    assert events_raw and logs_raw and log_records
    places = {
        "KV deployments": b"".join(kv_raw),
        "apply output": (out + err).encode(),
        "ps --json": ps_out.encode(),
        "events stream": b"".join(events_raw),
        "logs stream": b"".join(logs_raw),
        "supervisor log": "".join(log_records).encode(),
    }
    for where, data in places.items():
        assert secret.encode() not in data, f"the secret is in the {where}"


async def test_supervisor_with_another_key_refuses_the_replica(
    bus: Bus, events: EventLog, tmp_path: Path
) -> None:
    generate_secrets_key(tmp_path / "fleet.key")
    generate_secrets_key(tmp_path / "node.key")
    fleet_key = load_secrets_key(tmp_path / "fleet.key").public_key
    node_key = load_secrets_key(tmp_path / "node.key").public_key
    kv = await bus.kv(bus.names.secrets_keys_bucket)
    await kv.put(PUBLIC_KEY_ENTRY, encode(public_key_entry(fleet_key, node_id="elsewhere")))
    secret = f"s3cret-{uuid.uuid4().hex}"
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    locked = Deployment(
        name="locked",
        command=sleep,
        heartbeat_timeout_s=None,
        secret_env={"API_KEY": seal(fleet_key, secret)},
    )
    plain = Deployment(name="plain", command=sleep, heartbeat_timeout_s=None)
    for d in (locked, plain):
        await put_deployment(bus, d)
        await place(bus, d.name, 0, "n1")
    registry = CollectorRegistry()
    settings = process_settings("n1", secrets_key_file=tmp_path / "node.key")
    async with running_supervisor(bus, settings, registry):
        (failed,) = await eventually(lambda: events.of("failed", "locked-0") or None)
        assert failed.reason == "secret-key-mismatch"
        assert "'API_KEY'" in failed.detail and locked.secret_env["API_KEY"].key_id in failed.detail
        await eventually(
            replica_where(bus, "n1", lambda r: r.agent_id == "plain-0" and r.state == "running")
        )
        refused = await replica_where(bus, "n1", lambda r: r.agent_id == "locked-0")()
        assert refused is not None and refused.state == "failed"
        labels = {"cause": "key-mismatch"}
        assert registry.get_sample_value("agentbus_supervisor_secret_failures_total", labels) == 1
        assert registry.get_sample_value("agentbus_supervisor_secrets_key_mismatch") == 1
        entry = await kv.get(PUBLIC_KEY_ENTRY)
        assert entry.value is not None
        published = msgspec.json.decode(entry.value, type=SecretsPublicKey)
        assert published.node_id == "elsewhere"  # not overwritten by a key it does not retire

        # Sealed again to the node's key (a fixed fleet), the replica starts.
        resealed = msgspec.structs.replace(locked, secret_env={"API_KEY": seal(node_key, secret)})
        await put_deployment(bus, resealed)
        await eventually(
            replica_where(bus, "n1", lambda r: r.agent_id == "locked-0" and r.state == "running")
        )
    assert all(secret not in e.detail for e in events.events)


async def test_rotation_replaces_a_retired_published_key(bus: Bus, tmp_path: Path) -> None:
    generate_secrets_key(tmp_path / "old.key")
    generate_secrets_key(tmp_path / "new.key")
    old_key = load_secrets_key(tmp_path / "old.key").public_key
    new_key = load_secrets_key(tmp_path / "new.key").public_key
    kv = await bus.kv(bus.names.secrets_keys_bucket)
    await kv.put(PUBLIC_KEY_ENTRY, encode(public_key_entry(old_key, node_id="n0")))
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    old_sealed = Deployment(
        name="old",
        command=sleep,
        heartbeat_timeout_s=None,
        secret_env={"API_KEY": seal(old_key, "x")},
    )
    await put_deployment(bus, old_sealed)
    await place(bus, "old", 0, "n1")
    settings = process_settings(
        "n1",
        secrets_key_file=tmp_path / "new.key",
        secrets_retired_key_files=[tmp_path / "old.key"],
    )

    async def published() -> SecretsPublicKey | None:
        entry = await kv.get(PUBLIC_KEY_ENTRY)
        assert entry.value is not None
        found = msgspec.json.decode(entry.value, type=SecretsPublicKey)
        return found if found.node_id == "n1" else None

    async with running_supervisor(bus, settings):
        entry = await eventually(published)
        assert entry.key_id == seal(new_key, "").key_id
        await eventually(
            replica_where(bus, "n1", lambda r: r.agent_id == "old-0" and r.state == "running")
        )
