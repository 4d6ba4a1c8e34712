"""``agentbus cluster`` on a real three-server cluster (the embedded stack, auth on).

One stack for the module (it takes about 12 s to start); the test that kills a server
runs last.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.embedded import EmbeddedStack
from agentbus.settings import BusSettings
from tests._harness.cli import invoke
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(cluster=3, runtime="process", prefix="clu")
    asyncio.run(s.start())
    try:
        yield s
    finally:
        asyncio.run(s.stop())


@pytest.fixture(autouse=True)
def agentbus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_HOME", str(tmp_path / "home"))


@pytest.fixture
def operator(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> BusSettings:
    """The stack's settings, its operator creds (sys.creds beside them) in the env."""
    monkeypatch.setenv("AGENTBUS_CREDS_FILE", str(stack.settings.creds_file))
    return stack.settings


def cluster_json(settings: BusSettings, *args: str) -> dict[str, Any]:
    code, out, err = invoke(settings, "cluster", "--json", *args)
    assert code == 0, err
    status: dict[str, Any] = json.loads(out)
    return status


def test_lists_three_servers_and_every_stream_r3_with_a_leader(operator: BusSettings) -> None:
    status = cluster_json(operator)
    assert status["cluster"] == "agentbus"
    assert status["system_account"]
    assert [s["name"] for s in status["servers"]] == ["nats-0", "nats-1", "nats-2"]
    assert all(s["state"] == "ok" and s["version"] and s["jetstream"] for s in status["servers"])
    assert status["meta_leader"] in {"nats-0", "nats-1", "nats-2"}
    names = {s["stream"] for s in status["streams"]}
    assert {"CLU_TASKS", "CLU_RESULTS", "KV_clu_nodes", "KV_clu_tasks", "OBJ_clu_blobs"} <= names
    for s in status["streams"]:
        assert (s["replicas"], s["wanted_replicas"]) == (3, 3), s
        assert s["leader"] in {"nats-0", "nats-1", "nats-2"}, s
        assert sorted(p["server"] for p in s["peers"]) == ["nats-0", "nats-1", "nats-2"], s
        assert not s["under_replicated"] and not s["lost_quorum"], s
    assert [(n["node_id"], n["status"]) for n in status["nodes"]] == [("embedded", "live")]
    code, out, _ = invoke(operator, "cluster")
    assert code == 0
    assert "cluster agentbus: 3 servers" in out
    assert "nats-2" in out and "embedded" in out


def test_an_account_user_sees_the_servers_through_the_stream_peers(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack.settings.creds_file is not None
    alone = tmp_path / "operator.creds"  # no sys.creds beside it
    shutil.copy(stack.settings.creds_file, alone)
    monkeypatch.setenv("AGENTBUS_CREDS_FILE", str(alone))
    status = cluster_json(stack.settings)
    assert not status["system_account"]
    assert [(s["name"], s["state"]) for s in status["servers"]] == [
        ("nats-0", "ok"),
        ("nats-1", "ok"),
        ("nats-2", "ok"),
    ]
    assert len(status["client_urls"]) == 3


async def test_an_r1_bucket_is_raised_to_r3_and_a_refused_raise_is_reported(
    operator: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = operator.model_copy(update={"prefix": f"r{uuid.uuid4().hex[:8]}"})
    r1 = await Bus.connect(settings.model_copy(update={"stream_replicas": 1}))
    try:
        await r1.ensure(["registry"])
        info = await r1.js.stream_info(f"KV_{settings.prefix}_nodes")
        assert info.config.num_replicas == 1
    finally:
        await r1.close()
    status = await asyncio.to_thread(cluster_json, settings)
    assert all(s["under_replicated"] for s in status["streams"]), json.dumps(status["streams"])

    auto = await Bus.connect(settings)  # a service starting on the cluster: auto -> R3
    try:
        await auto.ensure(["registry"])
        info = await auto.js.stream_info(f"KV_{settings.prefix}_nodes")
        assert info.config.num_replicas == 3
    finally:
        await auto.close()

    async def raised() -> bool:  # the new replicas catch up, then all is well
        status = await asyncio.to_thread(cluster_json, settings)
        return all(
            s["replicas"] == 3 and not s["under_replicated"] and not s["lost_quorum"]
            for s in status["streams"]
        )

    await eventually(raised, timeout_s=30, every_s=0.3, what="R3 buckets current")

    five = await Bus.connect(settings.model_copy(update={"stream_replicas": 5}))
    try:
        await five.ensure(["registry"])  # refused by the cluster: logged, left at 3
        info = await five.js.stream_info(f"KV_{settings.prefix}_nodes")
        assert info.config.num_replicas == 3
    finally:
        await five.close()
    monkeypatch.setenv("AGENTBUS_STREAM_REPLICAS", "5")

    async def refused() -> list[dict[str, Any]] | None:
        streams: list[dict[str, Any]] = (await asyncio.to_thread(cluster_json, settings))["streams"]
        ok = all(s["under_replicated"] and not s["lost_quorum"] for s in streams)
        return streams if ok else None

    streams = await eventually(refused, timeout_s=30, every_s=0.3, what="3 of 5 replicas shown")
    assert [(s["replicas"], s["wanted_replicas"]) for s in streams] == [(3, 5)] * 2
    code, out, _ = await asyncio.to_thread(invoke, settings, "cluster")
    assert code == 0
    assert "under-replicated" in out


async def test_a_killed_server_shows_offline_and_the_streams_keep_quorum(
    stack: EmbeddedStack, operator: BusSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.kill(stack.pids["nats-1"], signal.SIGKILL)

    async def degraded() -> dict[str, Any] | None:
        status = await asyncio.to_thread(cluster_json, operator)
        servers = {s["name"]: s["state"] for s in status["servers"]}
        if servers.get("nats-1") != "offline":
            return None
        healthy = not status["streams_error"] and all(
            s["leader"] and not s["lost_quorum"] for s in status["streams"]
        )
        return status if healthy else None

    status = await eventually(degraded, timeout_s=30, every_s=0.5, what="nats-1 offline")
    assert {s["name"]: s["state"] for s in status["servers"]} == {
        "nats-0": "ok",
        "nats-1": "offline",
        "nats-2": "ok",
    }
    for s in status["streams"]:
        assert s["leader"] != "nats-1", s
        states = {p["server"]: p["state"] for p in s["peers"]}
        assert states["nats-1"] in {"lagging", "offline"}, s

    # Without the system account: the leaders stop hearing from it
    assert operator.creds_file is not None
    alone = tmp_path / "operator.creds"
    shutil.copy(operator.creds_file, alone)
    monkeypatch.setenv("AGENTBUS_CREDS_FILE", str(alone))

    async def seen_by_account() -> str | None:
        status = await asyncio.to_thread(cluster_json, operator)
        state = {s["name"]: s["state"] for s in status["servers"]}.get("nats-1")
        return state if state in {"lagging", "offline"} else None

    await eventually(seen_by_account, timeout_s=30, every_s=0.5, what="nats-1 not current")
