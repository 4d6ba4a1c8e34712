"""Asking every nats-server about itself over the system account.

``$SYS.REQ.SERVER.PING.VARZ`` is answered by every server of the cluster (one reply
each: name, client host and port, version, JetStream and its meta leader); only a
user of the system account may send it
(https://docs.nats.io/running-a-nats-service/configuration/sys_accounts). The fleet's
auth directory holds such a user: ``creds/sys.creds`` (``agentbus auth init``), beside
the operator's ``creds/operator.creds``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nats.errors
from loguru import logger

from agentbus.bus import Bus
from agentbus.cluster.status import ServerPing
from agentbus.errors import AgentBusError
from agentbus.settings import BusSettings

VARZ_PING = "$SYS.REQ.SERVER.PING.VARZ"
"""Every server answers with its ``/varz``."""


def system_creds_beside(creds_file: Path | None) -> Path | None:
    """``creds/sys.creds`` next to ``creds_file`` (the operator's), if it exists."""
    if creds_file is None:
        return None
    sys_creds = Path(creds_file).parent / "sys.creds"
    return sys_creds if sys_creds.is_file() else None


def server_ping(reply: dict[str, Any]) -> ServerPing | None:
    """A ``ServerPing`` from one VARZ reply (None if it is not one)."""
    server, data = reply.get("server") or {}, reply.get("data") or {}
    name = server.get("name") or data.get("server_name")
    if not name:
        return None
    host, port = data.get("host") or server.get("host") or "", data.get("port")
    url = f"nats://{host}:{port}" if port and host not in ("", "0.0.0.0", "::") else ""
    js = data.get("jetstream") or {}
    meta = js.get("meta") or {}
    return ServerPing(
        name=str(name),
        url=url,
        version=str(data.get("version") or server.get("ver") or ""),
        jetstream=bool(server.get("jetstream", bool(js.get("config")))),
        meta_leader=meta.get("leader") or None,
        meta_peers=sorted(str(r["name"]) for r in meta.get("replicas") or () if r.get("name")),
    )


async def ping_servers(
    settings: BusSettings, sys_creds: Path, *, expected: int, timeout_s: float = 1.5
) -> list[ServerPing] | None:
    """The VARZ of every server that answers within ``timeout_s`` seconds.

    Returns as soon as ``expected`` servers answered. None when the system account
    could not be reached (the creds refused, no server): the caller shows what an
    account user sees instead.
    """
    try:
        bus = await Bus.connect(
            settings.model_copy(update={"creds_file": sys_creds, "connect_timeout_s": timeout_s}),
            name="agentbus-cluster",
        )
    except AgentBusError as exc:
        logger.warning("system account not reachable", creds=str(sys_creds), error=str(exc))
        return None
    found: dict[str, ServerPing] = {}
    try:
        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox)
        await bus.nc.publish(VARZ_PING, b"{}", reply=inbox)
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            try:
                ping = server_ping(json.loads(msg.data))
            except ValueError:
                ping = None
            if ping is not None:
                found[ping.name] = ping
        await sub.unsubscribe()
    finally:
        await bus.close()
    return sorted(found.values(), key=lambda p: p.name)
