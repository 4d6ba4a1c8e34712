"""``agentbus.cluster.status`` over fake stream infos, and ``agentbus cluster`` on one server."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamInfo

from agentbus.bus import Bus
from agentbus.cluster.status import (
    ServerPing,
    node_health,
    server_health,
    stream_health,
    stream_kind,
)
from agentbus.cluster.sysinfo import server_ping
from agentbus.messages import NodeInfo, utcnow
from agentbus.settings import BusSettings
from tests._harness.cli import invoke, on_bus


@pytest.fixture(autouse=True)
def agentbus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_HOME", str(tmp_path / "home"))


def info(name: str, replicas: int, cluster: dict[str, Any] | None) -> StreamInfo:
    body: dict[str, Any] = {
        "config": {"name": name, "num_replicas": replicas, "subjects": ["x.>"]},
        "state": {"messages": 0, "bytes": 0, "first_seq": 0, "last_seq": 0, "consumer_count": 0},
    }
    if cluster is not None:
        body["cluster"] = cluster
    parsed: StreamInfo = StreamInfo.from_response(body)
    return parsed


def peer(name: str, *, current: bool = True, active_s: float = 0.5, **more: Any) -> dict[str, Any]:
    return {"name": name, "current": current, "active": int(active_s * 1e9), **more}


def test_stream_kind_by_prefix() -> None:
    assert stream_kind("AGENTBUS_TASKS", "agentbus") == ("stream", "AGENTBUS_TASKS")
    assert stream_kind("KV_agentbus_nodes", "agentbus") == ("kv", "agentbus_nodes")
    assert stream_kind("OBJ_agentbus_blobs", "agentbus") == ("objects", "agentbus_blobs")
    assert stream_kind("OTHER_TASKS", "agentbus") is None
    assert stream_kind("KV_other_nodes", "agentbus") is None


def test_healthy_r3_stream() -> None:
    got = stream_health(
        info("KV_p_nodes", 3, {"leader": "n0", "replicas": [peer("n1"), peer("n2")]}),
        prefix="p",
        wanted=3,
    )
    assert (got.kind, got.name, got.leader) == ("kv", "p_nodes", "n0")
    assert [(p.server, p.state) for p in got.peers] == [
        ("n0", "leader"),
        ("n1", "current"),
        ("n2", "current"),
    ]
    assert not got.under_replicated
    assert not got.lost_quorum


def test_one_replica_lost_keeps_quorum() -> None:
    silent = peer("n2", active_s=8.0)  # still "current" in the leader's view, not heard
    got = stream_health(
        info("P_TASKS", 3, {"leader": "n0", "replicas": [peer("n1"), silent]}), prefix="p", wanted=3
    )
    assert [p.state for p in got.peers] == ["leader", "current", "lagging"]
    assert not got.lost_quorum
    offline = peer("n2", current=False, offline=True)
    behind = peer("n1", current=False, lag=7)
    got = stream_health(
        info("P_TASKS", 3, {"leader": "n0", "replicas": [behind, offline]}), prefix="p", wanted=3
    )
    assert [(p.state, p.lag) for p in got.peers] == [("leader", 0), ("lagging", 7), ("offline", 0)]
    assert got.lost_quorum  # one of three current


def test_no_leader_is_lost_quorum() -> None:
    got = stream_health(
        info("P_TASKS", 3, {"replicas": [peer("n1"), peer("n2")]}), prefix="p", wanted=3
    )
    assert got.leader is None
    assert got.lost_quorum


def test_fewer_replicas_than_wanted_is_under_replicated() -> None:
    r1 = stream_health(info("P_TASKS", 1, {"leader": "n0"}), prefix="p", wanted=3)
    assert r1.under_replicated
    assert not r1.lost_quorum  # R1 with its leader serves
    placed = stream_health(
        info("P_TASKS", 3, {"leader": "n0", "replicas": [peer("n1")]}), prefix="p", wanted=3
    )
    assert placed.under_replicated  # configured 3, placed on 2
    single = stream_health(info("P_TASKS", 1, None), prefix="p", wanted=1)
    assert not single.under_replicated
    assert not single.lost_quorum


def test_servers_merge_peers_and_pings() -> None:
    streams = [
        stream_health(
            info("P_A", 3, {"leader": "n0", "replicas": [peer("n1"), peer("n2", active_s=9)]}),
            prefix="p",
            wanted=3,
        ),
        stream_health(
            info("P_B", 3, {"leader": "n1", "replicas": [peer("n0"), peer("n2", offline=True)]}),
            prefix="p",
            wanted=3,
        ),
    ]
    seen = server_health(streams, connected="n0", connected_url="nats://h0:4222")
    assert [(s.name, s.state, s.leads) for s in seen] == [
        ("n0", "ok", 1),
        ("n1", "ok", 1),
        ("n2", "offline", 0),
    ]
    assert seen[0].url == "nats://h0:4222"
    pings = [
        ServerPing(
            name=n, url=f"nats://{n}:4222", version="2.15.1", jetstream=True, meta_leader="n1"
        )
        for n in ("n0", "n1", "n3")
    ]
    seen = server_health(streams, connected="n0", connected_url="", pings=pings)
    by_name = {s.name: s for s in seen}
    assert by_name["n2"].state == "offline"  # a peer that did not answer
    assert by_name["n3"].state == "ok"  # answered, holds no replica
    assert by_name["n1"].meta_leader
    assert by_name["n3"].url == "nats://n3:4222"
    # no stream listed (no meta leader): the meta group still names the silent server
    lone = ServerPing(name="n0", url="", version="", jetstream=True, meta_leader=None)
    seen = server_health([], connected="n0", connected_url="", pings=[lone])
    assert [(s.name, s.state) for s in seen] == [("n0", "ok")]
    lone = ServerPing(
        name="n0", url="", version="", jetstream=True, meta_leader=None, meta_peers=["n1"]
    )
    seen = server_health([], connected="n0", connected_url="", pings=[lone])
    assert [(s.name, s.state) for s in seen] == [("n0", "ok"), ("n1", "offline")]


def test_server_ping_from_varz() -> None:
    reply = {
        "server": {"name": "nats-1", "host": "10.0.0.2", "ver": "2.15.1", "jetstream": True},
        "data": {
            "host": "0.0.0.0",
            "port": 4222,
            "jetstream": {
                "meta": {"leader": "nats-0", "replicas": [{"name": "nats-2"}, {"name": "nats-0"}]}
            },
        },
    }
    got = server_ping(reply)
    assert got == ServerPing(
        name="nats-1",
        url="",
        version="2.15.1",
        jetstream=True,
        meta_leader="nats-0",
        meta_peers=["nats-0", "nats-2"],
    )
    assert server_ping({"data": {}}) is None


def test_node_health_late_after_missed_beats() -> None:
    now = utcnow()
    nodes = [
        NodeInfo(
            node_id=n, runtime="process", started_at=now, heartbeat_at=now - timedelta(seconds=s)
        )
        for n, s in (("b", 7.0), ("a", 1.0))
    ]
    got = node_health(nodes, now=now)
    assert [(n.node_id, n.status) for n in got] == [("a", "live"), ("b", "late")]


def test_cluster_command_on_one_server_shows_no_cluster(bus_settings: BusSettings) -> None:
    async def nothing(bus: Bus) -> None:
        return None

    on_bus(bus_settings, nothing)  # the whole contract, R1
    code, out, err = invoke(bus_settings, "cluster", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["cluster"] is None
    assert not status["system_account"]
    assert [s["state"] for s in status["servers"]] == ["ok"]
    names = {s["stream"] for s in status["streams"]}
    p = bus_settings.prefix
    assert {f"{p.upper()}_TASKS", f"KV_{p}_nodes", f"OBJ_{p}_blobs"} <= names
    for s in status["streams"]:
        assert (s["replicas"], s["wanted_replicas"]) == (1, 1), s
        assert not s["under_replicated"], s
        assert not s["lost_quorum"], s
    code, out, _ = invoke(bus_settings, "cluster")
    assert code == 0
    assert "no cluster: one server" in out


def test_node_health_shows_a_fenced_node() -> None:
    now = utcnow()
    node = NodeInfo(node_id="c", runtime="process", started_at=now, heartbeat_at=now, fenced=True)
    assert [n.status for n in node_health([node], now=now)] == ["fenced"]
