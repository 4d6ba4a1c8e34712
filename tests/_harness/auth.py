"""A nats-server with decentralized auth on, and identities minted for a test prefix."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats.errors

from agentbus.auth.agent_grants import AgentGrant, agent_permissions
from agentbus.auth.authority import AuthDir, Authority, init_auth, service_creds, write_secret
from agentbus.auth.permissions import Permissions, operator_permissions, service_permissions
from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import AgentBusError
from agentbus.names import Names
from agentbus.settings import BusSettings
from agentbus_supervisor.settings import SupervisorSettings
from tests._harness.nats_server import NatsServer
from tests._harness.polling import eventually
from tests._harness.services import running_scheduler
from tests._harness.supervisor import running_supervisor


@dataclass
class AuthServer:
    """A nats-server trusting the operator of ``auth``; identities minted into ``creds_dir``."""

    server: NatsServer
    auth: AuthDir
    creds_dir: Path

    @property
    def url(self) -> str:
        return self.server.client_url

    def mint(
        self, prefix: str, name: str, permissions: Permissions, *, ttl_s: float | None = None
    ) -> BusSettings:
        """Settings connecting as a new user ``name`` with ``permissions``."""
        creds = Authority(self.auth).mint(name, permissions, expires_in_s=ttl_s)
        path = self.creds_dir / prefix / f"{name}.creds"
        write_secret(path, creds.creds_text())
        return BusSettings(nats_url=self.url, prefix=prefix, creds_file=path)

    def operator(self, prefix: str) -> BusSettings:
        """Full access (what ``agentbus`` CLI users hold)."""
        return self.mint(prefix, "operator", operator_permissions("operator"))

    def service(self, prefix: str, service: str, *, node_id: str | None = None) -> BusSettings:
        """Service ``service``'s own identity."""
        permissions = service_permissions(Names(prefix), service, node_id=node_id)
        return self.mint(
            prefix, service if node_id is None else f"{service}-{node_id}", permissions
        )

    def agent(self, prefix: str, grant: AgentGrant, *, ttl_s: float | None = 600.0) -> BusSettings:
        """An agent replica's identity, as its supervisor mints it."""
        return self.mint(
            prefix, f"agent-{grant.agent_id}", agent_permissions(Names(prefix), grant), ttl_s=ttl_s
        )

    def anonymous(self, prefix: str) -> BusSettings:
        return BusSettings(nats_url=self.url, prefix=prefix, connect_timeout_s=3.0)


@contextmanager
def auth_server() -> Iterator[AuthServer]:
    """Start a nats-server with auth on (``agentbus auth init`` in a temp dir)."""
    root = Path(tempfile.mkdtemp(prefix="agentbus-auth-"))
    auth = init_auth(root / "auth")
    server = NatsServer(config=auth.server_conf.read_text()).start()
    try:
        yield AuthServer(server, auth, root / "creds")
    finally:
        server.stop()


async def refused(
    server: AuthServer, subject: str, action: Callable[[], Awaitable[object]]
) -> None:
    """Run ``action`` and wait until the server logs a violation naming ``subject``.

    Publishes and subscriptions the server refuses return normally on the client (the
    refusal is an asynchronous ``-ERR``), and refused JetStream requests time out: the
    server's log is the proof, not the client's exception.
    """
    seen = len(server.server.violations)
    with contextlib.suppress(TimeoutError, nats.errors.Error, AgentBusError):
        await asyncio.wait_for(action(), 3.0)

    def logged() -> bool:
        return any(f'"{subject}"' in line for line in server.server.violations_since(seen))

    await eventually(logged, timeout_s=5.0, what=f"the server refusing {subject}")


def no_violations_since(server: AuthServer, seen: int) -> list[str]:
    """The violations the server logged after the first ``seen`` (expected: none)."""
    return server.server.violations_since(seen)


@asynccontextmanager
async def supervised_fleet(
    server: AuthServer, prefix: str, settings: SupervisorSettings
) -> AsyncIterator[Client]:
    """A scheduler and a supervisor (``settings``) on their own identities; an operator's
    ``Client`` (the contract made) for the block."""
    operator = await Bus.connect(server.operator(prefix))
    await operator.ensure()
    scheduler = await Bus.connect(server.service(prefix, "scheduler"))
    creds = service_creds(server.auth, prefix, "supervisor", node_id=settings.node_id)
    supervisor = await Bus.connect(
        BusSettings(nats_url=server.url, prefix=prefix, creds_file=creds)
    )
    try:
        async with (
            running_scheduler(scheduler, probe=operator),
            running_supervisor(supervisor, settings, probe=operator),
        ):
            yield Client(operator)
    finally:
        for bus in (operator, scheduler, supervisor):
            await bus.close()
