"""A fleet on separate hosts: each host a network namespace running the real services.

``HostFleet`` makes ``size`` hosts ``h0..`` on one ``Network`` (``tests._harness.netns``).
Every host runs one nats-server of a cluster (routes between the hosts' addresses,
JetStream, operator-mode auth with its own resolver directory) and the services of the
real deployment shape: a registry, a scheduler (its singleton duties behind KV leases)
and a supervisor (process runtime, node id = host name, its own node creds). Each of a
host's processes lists its own host's server first and keeps that order
(``AGENTBUS_NATS_SERVERS_IN_ORDER``), so it talks to the local server while it is up.
The test process (root namespace) reaches the hosts through the bridge with
``HostFleet.settings`` (operator creds, every server's URL).

Faults: ``kill_server``/``start_server`` (SIGKILL a nats-server, restart it on the same
store), ``stream_leader``, ``partition``/``heal`` (a host's link down/up) and
``kill_host`` (SIGKILL every process inside the host's namespace).

Usage::

    with Network() as net:
        async with HostFleet(net, tmp_path, size=3) as fleet:
            bus = await Bus.connect(fleet.settings)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nats.errors

from agentbus.auth.authority import AuthDir, init_auth, server_conf_text, service_creds
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.cluster.conf import ClusterSpec, ServerAddress, cluster_server_conf
from agentbus.embedded.processes import nats_server_binary
from agentbus.errors import AgentBusError
from agentbus.messages import GetNodeStatus, NodeStatusReply
from agentbus.settings import BusSettings
from tests._harness.netns import Host, Network

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
METRICS_PORT = 9464
"""Every host has its own network stack, so every host uses the same ports."""
PING_INTERVAL_S = 2.0
"""Faster than the product's default (``agentbus.cluster.conf.PING_INTERVAL_S``): the
tests' partitions are short."""
SERVICES = ("registry", "scheduler", "supervisor")
_INHERITED = ("AGENTBUS_", "SUPERVISOR_", "SCHEDULER_", "REGISTRY_")
"""Settings of the test process's environment that the hosts' processes do not inherit."""


@dataclass
class FleetHost:
    """One host of the fleet: its namespace, server address and files."""

    host: Host
    server: ServerAddress
    dir: Path

    @property
    def name(self) -> str:
        """The host's name: also its nats-server name and its supervisor's node id."""
        return self.host.name

    @property
    def conf(self) -> Path:
        """Its nats-server's configuration file."""
        return self.dir / "nats-server.conf"

    def log(self, process: str) -> Path:
        """Where ``process`` (``nats-server``, ``registry``, ...) writes its output."""
        return self.dir / f"{process}.log"

    def log_tail(self, process: str, chars: int = 3000) -> str:
        """The end of ``process``'s log."""
        with contextlib.suppress(OSError):
            return self.log(process).read_text(errors="replace")[-chars:]
        return ""


class HostFleet:
    """``size`` hosts, each a nats-server of one cluster plus registry, scheduler and
    supervisor (async context manager: ``start``/``stop``; the ``Network`` is the caller's).

    Args:
        network: an open ``Network``; hosts ``h0..h<size-1>`` are added to it.
        work_dir: where auth, stores, creds and logs go (one directory per host).
        size: number of hosts (3 for an R3 cluster).
        prefix: the fleet's prefix.
        env: extra environment of every service (e.g. ``SCHEDULER_*`` timings).
        supervisor_env: extra environment of the supervisors only.
    """

    def __init__(
        self,
        network: Network,
        work_dir: Path,
        *,
        size: int = 3,
        prefix: str = "hosts",
        env: dict[str, str] | None = None,
        supervisor_env: dict[str, str] | None = None,
    ) -> None:
        self.network = network
        self.work_dir = work_dir
        self.prefix = prefix
        self.extra_env = env or {}
        self.supervisor_env = supervisor_env or {}
        self.auth: AuthDir | None = None
        self.hosts: dict[str, FleetHost] = {}
        names = [f"h{i}" for i in range(size)]
        for name in names:
            host = network.add_host(name)
            address = ServerAddress(name, host.address, CLIENT_PORT, CLUSTER_PORT)
            self.hosts[name] = FleetHost(host, address, work_dir / name)
        self.spec = ClusterSpec(tuple(h.server for h in self.hosts.values()))

    @property
    def settings(self) -> BusSettings:
        """How the test process reaches the fleet: every server, operator creds."""
        assert self.auth is not None, "start the fleet first"
        return BusSettings(
            nats_url=self.spec.client_urls,
            prefix=self.prefix,
            creds_file=self.auth.creds("operator"),
        )

    def urls_from(self, name: str) -> str:
        """``AGENTBUS_NATS_URL`` of a process on host ``name``: its own server first."""
        own = self.hosts[name].server
        others = [h.server for h in self.hosts.values() if h.name != name]
        return ",".join(s.client_url for s in (own, *others))

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, *, ready_timeout_s: float = 60.0) -> HostFleet:
        """Start every server, create the contract (R3), start every host's services.

        Returns once JetStream answers, every supervisor's node is registered and every
        service answers ``$SRV.PING`` on every host.

        Raises:
            AssertionError: not ready within ``ready_timeout_s`` (with log tails).
        """
        self.auth = init_auth(self.work_dir / "auth", prefix=self.prefix)
        for fh in self.hosts.values():
            fh.dir.mkdir(parents=True, exist_ok=True)
            store = fh.dir / "jetstream"
            conf = cluster_server_conf(
                self.spec, fh.name, store_dir=str(store), ping_interval_s=PING_INTERVAL_S
            )
            conf += server_conf_text(self.auth, resolver_dir=str(store / "resolver"))
            fh.conf.write_text(conf)
            self.start_server(fh.name)
        deadline = time.monotonic() + ready_timeout_s
        bus = await self._ready_bus(deadline)
        try:
            for fh in self.hosts.values():
                self.start_services(fh.name)
            await self._wait_services(bus, deadline)
        finally:
            await bus.close()
        return self

    async def stop(self) -> None:
        """SIGTERM the services of every host, then its server (SIGKILL after 10 s)."""
        for fh in self.hosts.values():
            servers = {n: p for n, p in fh.host.procs.items() if n == "nats-server"}
            for name in servers:
                fh.host.procs.pop(name)
            await asyncio.to_thread(fh.host.terminate_all, 10.0)
            fh.host.procs.update(servers)
        for fh in self.hosts.values():
            await asyncio.to_thread(fh.host.terminate_all, 10.0)

    async def __aenter__(self) -> HostFleet:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- processes ------------------------------------------------------------------
    def start_server(self, name: str) -> None:
        """Start host ``name``'s nats-server on its configuration (and store)."""
        fh = self.hosts[name]
        fh.host.spawn(
            "nats-server", [nats_server_binary(), "-c", str(fh.conf)], log=fh.log("nats-server")
        )

    def kill_server(self, name: str) -> None:
        """SIGKILL host ``name``'s nats-server (its store stays for ``start_server``)."""
        self.hosts[name].host.kill("nats-server")

    def service_env(self, name: str, service: str) -> dict[str, str]:
        """The environment of ``service`` on host ``name`` (mints its creds)."""
        assert self.auth is not None
        fh = self.hosts[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
        node = name if service == "supervisor" else None
        creds = service_creds(
            self.auth, self.prefix, service, node_id=node, path=fh.dir / f"{service}.creds"
        )
        env.update(
            AGENTBUS_NATS_URL=self.urls_from(name),
            AGENTBUS_NATS_SERVERS_IN_ORDER="true",
            AGENTBUS_PREFIX=self.prefix,
            AGENTBUS_CREDS_FILE=str(creds),
            PYTHONUNBUFFERED="1",
        )
        if service == "scheduler":
            env.update(
                SCHEDULER_INSTANCE_ID=f"{name}-scheduler",
                SCHEDULER_METRICS_PORT=str(METRICS_PORT),
            )
        env.update(self.extra_env)
        if service == "supervisor":
            agent_creds = fh.dir / "agent-creds"
            agent_creds.mkdir(mode=0o700, exist_ok=True)
            env.update(
                SUPERVISOR_NODE_ID=name,
                SUPERVISOR_RUNTIME="process",
                SUPERVISOR_LABELS=f'{{"host": "{name}"}}',
                SUPERVISOR_STATE_DIR=str(fh.dir / "supervisor-state"),
                SUPERVISOR_AUTH_DIR=str(self.auth.path),
                SUPERVISOR_CREDS_DIR=str(agent_creds),
                SUPERVISOR_CREDS_HOST_DIR=str(agent_creds),
            )
            env.update(self.supervisor_env)
        return env

    def start_services(self, name: str) -> None:
        """Start registry, scheduler and supervisor on host ``name``."""
        fh = self.hosts[name]
        for service in SERVICES:
            argv = [sys.executable, "-m", f"agentbus_{service}"]
            fh.host.spawn(service, argv, env=self.service_env(name, service), log=fh.log(service))

    def kill_host(self, name: str) -> None:
        """SIGKILL every process inside host ``name``: servers, services and agents."""
        fh = self.hosts[name]
        pids = subprocess.run(
            ["ip", "netns", "pids", fh.host.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        fh.host.kill_all()

    def partition(self, name: str) -> None:
        """Cut host ``name`` off from the other hosts (and from the test process)."""
        self.network.partition(name)

    def heal(self, name: str) -> None:
        """Reconnect host ``name``."""
        self.network.heal(name)

    def logs(self, chars: int = 2000, *, servers: bool = True) -> str:
        """Tails of every log of every host (for a failing test's output); the
        nats-servers' too with ``servers``."""
        parts = []
        for fh in self.hosts.values():
            for process in ("nats-server", *SERVICES) if servers else SERVICES:
                parts.append(f"--- {fh.name} {process}\n{fh.log_tail(process, chars)}")
        return "\n".join(parts)

    # -- observation ----------------------------------------------------------------
    async def stream_leader(self, bus: Bus, stream: str) -> str:
        """The host whose server leads ``stream`` (its Raft leader's server name)."""
        info = await bus.js.stream_info(stream)
        assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader"
        return info.cluster.leader

    async def node_status(self, bus: Bus, name: str, timeout_s: float = 1.0) -> NodeStatusReply:
        """What host ``name``'s supervisor runs (its status request)."""
        subject = f"{self.prefix}.supervisor.{name}.status"
        return await bus.request(subject, GetNodeStatus(), NodeStatusReply, timeout_s=timeout_s)

    async def _ready_bus(self, deadline: float) -> Bus:
        """A connection once JetStream answers and the contract exists (R3)."""
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("nats-server")
            try:
                bus = await Bus.connect(self.settings, name="hosts-test")
            except (AgentBusError, OSError) as exc:
                last = repr(exc)
                await asyncio.sleep(0.3)
                continue
            try:
                await bus.ensure()
                return bus
            except (AgentBusError, nats.errors.Error, TimeoutError) as exc:
                last = repr(exc)
                await bus.close()
            await asyncio.sleep(0.5)
        raise AssertionError(f"the cluster was not ready: {last}\n{self.logs()}")

    async def _wait_services(self, bus: Bus, deadline: float) -> None:
        client = Client(bus)
        want = set(self.hosts)
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive(*SERVICES)
            try:
                nodes = {n.node_id for n in await client.nodes()}
                answering = {name for name in want if await self._answers(bus, name)}
                if nodes >= want and answering >= want:
                    return
                last = (sorted(nodes), sorted(answering))
            except (AgentBusError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.3)
        raise AssertionError(f"the hosts' services were not ready: {last}\n{self.logs()}")

    async def _answers(self, bus: Bus, name: str) -> bool:
        try:
            await self.node_status(bus, name)
        except (AgentBusError, TimeoutError):
            return False
        return True

    def _check_alive(self, *processes: str) -> None:
        for fh in self.hosts.values():
            for process in processes:
                proc = fh.host.procs.get(process)
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(
                        f"{process} on {fh.name} exited ({proc.returncode}):\n"
                        + fh.log_tail(process)
                    )


async def replication_problems(bus: Bus, *, replicas: int = 3) -> list[str]:
    """What keeps the account's streams (KV and object stores too) from full replication.

    Empty when every stream has ``replicas`` replicas, a leader, and every follower
    online and current.
    """
    problems = []
    for info in await bus.js.streams_info():
        name = info.config.name
        if info.config.num_replicas != replicas:
            problems.append(f"{name}: R{info.config.num_replicas}")
            continue
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            problems.append(f"{name}: no leader")
            continue
        peers = cluster.replicas or []
        lagging = [p.name for p in peers if p.offline or not p.current]
        if len(peers) != replicas - 1 or lagging:
            problems.append(f"{name}: leader {cluster.leader}, followers not current {lagging}")
    return problems
