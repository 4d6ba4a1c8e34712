"""Health probe of a service process: is its NATS connection alive, end to end?

``python -m agentbus.service.health <service>`` (compose ``healthcheck``) connects with the
``AGENTBUS_*`` settings, sends ``$SRV.PING.<service>`` and exits 0 when an instance
of ``<service>`` on this host (``socket.gethostname()``; in a container: this
container) with this prefix answers within ``--timeout-s``, else 1. An answer means
the service's connection carries messages both ways through nats-server: a
connection closed for good, or one stuck reconnecting, does not answer.

Every ``agentbus.service.MicroService`` puts ``prefix``, ``host`` and ``pid`` in its
``nats.micro`` metadata, which ``$SRV.PING`` replies carry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from agentbus.bus import Bus
from agentbus.errors import AgentBusError
from agentbus.names import check_token
from agentbus.settings import BusSettings

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


async def ping_replies(
    nc: NatsClient, service: str | None = None, *, wait_s: float = 0.5
) -> list[dict[str, Any]]:
    """The ``$SRV.PING[.<service>]`` replies (decoded JSON) heard within ``wait_s``."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try:
        await nc.publish(f"$SRV.PING.{service}" if service else "$SRV.PING", b"", reply=inbox)
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            if not msg.data:  # a "no responders" status
                break
            try:
                replies.append(json.loads(msg.data))
            except ValueError:
                continue
    finally:
        await sub.unsubscribe()
    return replies


async def ping(bus: Bus, service: str, *, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """The ``$SRV.PING.<service>`` replies of ``bus``'s prefix heard within ``timeout_s``.

    Raises:
        ContractError: ``service`` is not a token.
    """
    check_token("service", service)
    replies = await ping_replies(bus.nc, service, wait_s=timeout_s)
    return [r for r in replies if (r.get("metadata") or {}).get("prefix") == bus.names.prefix]


async def probe(settings: BusSettings, service: str, *, host: str, timeout_s: float) -> bool:
    """Whether an instance of ``service`` on ``host`` answers a ping within ``timeout_s``."""
    try:
        bus = await Bus.connect(settings, name=f"agentbus-health-{service}")
    except AgentBusError:
        return False
    try:
        replies = await ping(bus, service, timeout_s=timeout_s)
    finally:
        await bus.close()
    return any((r.get("metadata") or {}).get("host") == host for r in replies)


def main(argv: list[str] | None = None) -> int:
    """``python -m agentbus.service.health SERVICE [--timeout-s S]``: exit 0 healthy, 1 not."""
    parser = argparse.ArgumentParser(prog="python -m agentbus.service.health", description=__doc__)
    parser.add_argument("service", help="nats.micro service name, e.g. scheduler")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="wait this long for a pong")
    args = parser.parse_args(argv)
    settings = BusSettings(connect_timeout_s=args.timeout_s)
    host = socket.gethostname()
    healthy = asyncio.run(probe(settings, args.service, host=host, timeout_s=args.timeout_s))
    if not healthy:
        print(f"{args.service} on {host}: no answer to $SRV.PING", file=sys.stderr)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
