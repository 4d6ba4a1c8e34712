"""A hub nats-server with a leaf-node listener and leaf servers joined to it, auth on.

``hub_server`` starts the hub (JetStream, ``leafnodes { listen }``, the fleet's auth
lines, ``leafnode_jetstream_conf``) on 127.0.0.1 for clients; ``LeafServer`` writes a
leaf's configuration (``agentbus.cluster.conf.leaf_server_conf`` plus the auth lines
with its own resolver directory) and runs it, on loopback or inside a network
namespace (``tests._harness.netns.Host``), until its link to the hub is up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from agentbus.auth.authority import AuthDir, Authority, server_conf_text
from agentbus.cluster.conf import leaf_server_conf, leafnode_jetstream_conf
from agentbus.embedded.processes import free_port
from tests._harness.nats_server import NatsServer, nats_server_binary
from tests._harness.netns import Host

LINK_UP = "Leafnode connection created"
"""What nats-server logs when a leaf-node link is up (each end)."""


def hub_server(
    auth: AuthDir, store_dir: Path, *, leaf_host: str = "127.0.0.1"
) -> tuple[NatsServer, str]:
    """A started hub (JetStream, clients on 127.0.0.1, leaf nodes on ``leaf_host``) and
    the leaf-node URL a leaf's remote names."""
    port = free_port()
    account = Authority(auth).account_public_key
    config = (
        f'leafnodes {{ listen: "{leaf_host}:{port}" }}\n'
        + leafnode_jetstream_conf(account)
        + server_conf_text(auth, resolver_dir=str(store_dir / "resolver"))
    )
    return NatsServer(store_dir, config=config).start(), f"nats://{leaf_host}:{port}"


class LeafServer:
    """A leaf server of an edge site, joined to the hub at ``hub_url`` as ``creds``.

    Attributes:
        client_url: where the site's supervisor and agents connect.
        log: the server's log file.
    """

    def __init__(
        self,
        name: str,
        auth: AuthDir,
        work_dir: Path,
        *,
        hub_url: str,
        creds: Path,
        host: Host | None = None,
    ) -> None:
        self.name = name
        self.host = host
        address = host.address if host else "127.0.0.1"
        port = 4222 if host else free_port()
        self.client_url = f"nats://{address}:{port}"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.conf = work_dir / f"{name}.conf"
        self.log = work_dir / f"{name}.log"
        account = Authority(auth).account_public_key
        self.conf.write_text(
            leaf_server_conf(
                name,
                listen=f"{address}:{port}",
                hub_urls=[hub_url],
                credentials=str(creds),
                account=account,
            )
            + server_conf_text(auth, resolver_dir=str(work_dir / f"{name}-resolver"))
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> LeafServer:
        """Start the server; return once its link to the hub is up.

        Raises:
            RuntimeError: it exited, or the link was not up within ``timeout_s`` (with
                the log's tail).
        """
        argv = [nats_server_binary(), "-c", str(self.conf)]
        if self.host:
            self._proc = self.host.spawn(self.name, argv, log=self.log)
        else:
            with self.log.open("ab") as out:
                self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.links_up() > 0:
                return self
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"leaf {self.name} did not join the hub:\n{tail}")

    def links_up(self) -> int:
        """How often the log says the link came up (1 after start, +1 per reconnect)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").count(LINK_UP)
        return 0

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 5 s) and reap it."""
        if self._proc is None:
            return
        if self.host:
            self.host.kill(self.name)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, 15)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
