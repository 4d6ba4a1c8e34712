"""The embedded stack's nats-server cluster: N servers on loopback ports.

For local experiments (``agentbus embedded --cluster 3``): the same configuration as
real hosts (``agentbus.cluster.conf``), every server on 127.0.0.1 with its own ports,
store and resolver directories. With three or more servers the contract's streams and
buckets are R3 (``agentbus.bus.contract.stream_replicas``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import nats.errors

from agentbus.auth.authority import AuthDir, server_conf_text
from agentbus.bus import Bus
from agentbus.cluster.conf import ClusterSpec, ServerAddress, cluster_server_conf
from agentbus.embedded.processes import free_port, nats_server_binary
from agentbus.errors import AgentBusError, UnavailableError
from agentbus.settings import BusSettings

if TYPE_CHECKING:
    from agentbus.embedded.stack import EmbeddedStack

START_TIMEOUT_S = 30.0
"""How long the servers may take to listen and elect a JetStream meta leader."""


def loopback_cluster(size: int) -> ClusterSpec:
    """A cluster of ``size`` servers ``nats-0..`` on free 127.0.0.1 ports."""
    return ClusterSpec(
        tuple(
            ServerAddress(f"nats-{i}", "127.0.0.1", free_port(), free_port()) for i in range(size)
        )
    )


async def start_cluster(stack: EmbeddedStack, size: int) -> str:
    """Start ``size`` clustered servers as children of ``stack``; return their URLs.

    Returns once every server listens and JetStream answers (a meta leader is elected).
    ``stack.nats_url`` is set to the comma-separated client URLs.

    Raises:
        UnavailableError: a server exited, or JetStream did not answer within
            ``START_TIMEOUT_S`` (the message carries the servers' log tails).
    """
    spec = loopback_cluster(size)
    for server in spec.servers:
        store = stack.store_dir / server.name
        conf = cluster_server_conf(spec, server.name, store_dir=str(store))
        if stack.credentials is not None:
            auth = AuthDir(stack.credentials.auth_dir)
            conf += server_conf_text(auth, resolver_dir=str(store / "resolver"))
        conf += stack.tls_conf()
        path = stack.work_dir / f"{server.name}.conf"
        path.write_text(conf)
        stack.spawn(server.name, [nats_server_binary(), "-c", str(path)], None)
    stack.cluster_spec = spec
    stack.nats_url = _scheme(stack, spec.client_urls)
    await _wait_jetstream(stack, [s.name for s in spec.servers], stack.settings)
    return stack.nats_url


async def restart_server(stack: EmbeddedStack, name: str) -> None:
    """Start server ``name`` of ``stack``'s cluster again, after it exited (e.g. killed).

    Same configuration file, store and ports as before; its log is appended to.
    Returns once JetStream answers on that server's own client URL (it rejoined the
    cluster; its stream replicas may still be catching up).

    Raises:
        KeyError: ``name`` is not a server of the stack's cluster (or it has none).
        ValueError: the server is still running.
        UnavailableError: it exited again, or JetStream did not answer through it
            within ``START_TIMEOUT_S`` (the message carries its log tail).
    """
    if stack.cluster_spec is None:
        raise KeyError(f"no server {name!r}: the stack runs one server, not a cluster")
    server = stack.cluster_spec.server(name)
    if name not in stack.failed():
        raise ValueError(f"{name} is still running (pid {stack.pids[name]})")
    path = stack.work_dir / f"{name}.conf"
    stack.spawn(name, [nats_server_binary(), "-c", str(path)], None)
    alone = stack.settings.model_copy(update={"nats_url": _scheme(stack, server.client_url)})
    await _wait_jetstream(stack, [name], alone)


def _scheme(stack: EmbeddedStack, urls: str) -> str:
    return urls.replace("nats://", "tls://") if stack.tls else urls


async def _wait_jetstream(stack: EmbeddedStack, names: list[str], settings: BusSettings) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if failed := {n: rc for n, rc in stack.failed().items() if n in names}:
            name = next(iter(failed))
            raise UnavailableError(f"{name} exited during start:\n{stack.log_tail(name)}")
        try:
            bus = await Bus.connect(settings, name="agentbus-embedded")
            try:
                await bus.js.account_info()
                return
            finally:
                await bus.close()
        except (AgentBusError, nats.errors.Error, TimeoutError, OSError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.3)
    tails = "\n".join(f"--- {n}\n{stack.log_tail(n)}" for n in names)
    raise UnavailableError(f"the nats-server cluster was not ready: {last}\n{tails}")
