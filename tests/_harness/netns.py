"""Hosts with their own network stack on one machine: Linux network namespaces.

``Network`` makes a bridge in the root namespace and, per ``add_host``, a namespace
joined to it by a veth pair with its own address: traffic between hosts crosses real
TCP on addresses the test created, never a shared loopback. The test process (root
namespace) reaches every host through the bridge's own address. ``partition`` takes a
host's link down (it reaches no other host, and none reaches it) and ``heal`` brings it
back; ``Host.spawn`` runs a process inside a host (``ip netns exec``).

Needs root, iproute2 and iptables: with ``br_netfilter`` loaded (Docker loads it)
bridged packets cross the iptables FORWARD chain, whose policy Docker sets to DROP, so
the network inserts an ACCEPT rule for its own bridge and removes it on ``close``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO


def _run(*argv: str) -> str:
    """Run ``argv`` and return its stdout; CalledProcessError with stderr on failure."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(
            done.returncode, argv, output=done.stdout, stderr=done.stderr
        )
    return done.stdout


def netns_available() -> str | None:
    """None when this machine can make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        try:
            _run(tool, "-V")
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"{tool} is not usable: {exc}"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no route of this machine overlaps."""
    routes = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in _run("ip", "-4", "route").splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    for _ in range(100):
        net = ipaddress.IPv4Network(
            f"10.{secrets.randbelow(200) + 40}.{secrets.randbelow(250) + 1}.0/24"
        )
        if not any(net.overlaps(r) for r in routes):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")


@dataclass
class Host:
    """One host: a network namespace with one address on the test network.

    Attributes:
        name: the host's name in the test (also its node id, by convention).
        netns: the namespace's name (``ip netns``).
        address: its IPv4 address on the bridge.
        link: the root-namespace end of its veth pair (down: partitioned).
        procs: processes started in it, by name.
    """

    name: str
    netns: str
    address: str
    link: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host as ``name``; output to ``log`` (else dropped)."""
        out: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL the process ``name`` (and its session) and reap it."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)

    def kill_all(self) -> None:
        """SIGKILL every process started in this host: the host dies."""
        for name in list(self.procs):
            self.kill(name)

    def terminate_all(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process of this host, SIGKILL what outlives ``timeout_s``."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            self.kill(name)


class Network:
    """A bridge and the hosts on it (context manager; ``close`` removes everything)."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.bridge = f"ab{self.id}br"
        self.subnet = _free_subnet()
        addresses = self.subnet.hosts()
        self.gateway = str(next(addresses))
        """The bridge's address: how the test process reaches the hosts."""
        self._addresses = addresses
        self.hosts: dict[str, Host] = {}
        self._rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self._up = False

    def open(self) -> Network:
        """Create the bridge and the FORWARD rule."""
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._up = True
        _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        _run("iptables", "-I", *self._rule)
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace on the bridge with the next free address, lo and eth0 up."""
        n = len(self.hosts)
        netns, link, peer = f"ab{self.id}-{name}", f"ab{self.id}v{n}", f"ab{self.id}p{n}"
        address = str(next(self._addresses))
        _run("ip", "netns", "add", netns)
        host = Host(name=name, netns=netns, address=address, link=link)
        self.hosts[name] = host
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", netns)
        _run("ip", "link", "set", link, "master", self.bridge)
        _run("ip", "link", "set", link, "up")
        inside = ("ip", "netns", "exec", netns, "ip")
        _run(*inside, "link", "set", peer, "name", "eth0")
        _run(*inside, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "route", "add", "default", "via", self.gateway)
        return host

    def partition(self, name: str) -> None:
        """Cut host ``name`` off: its link goes down (established TCP stalls)."""
        _run("ip", "link", "set", self.hosts[name].link, "down")

    def heal(self, name: str) -> None:
        """Bring host ``name``'s link back up."""
        _run("ip", "link", "set", self.hosts[name].link, "up")

    def close(self) -> None:
        """Kill every host's processes; delete namespaces, links, bridge and rule."""
        for host in self.hosts.values():
            host.kill_all()
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "link", "del", host.link)
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "del", host.netns)
        self.hosts.clear()
        if self._up:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("iptables", "-D", *self._rule)
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "link", "del", self.bridge)
            self._up = False

    def __enter__(self) -> Network:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
